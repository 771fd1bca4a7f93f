"""HTTP chat endpoint: streams the model's answer to the caller as it is generated."""
import base64
import json

MODEL = "gemma3-270m"


def _request(event):
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    data = json.loads(body) if body.strip().startswith("{") else {}
    query = event.get("queryStringParameters") or {}
    return data.get("message") or query.get("q") or "Hello!", int(data.get("max_tokens", query.get("max_tokens", 64)))


def handler(event, context):
    message, max_tokens = _request(event)
    # The first item is the HTTP prelude; every later item is streamed as it comes.
    yield {"statusCode": 200, "headers": {"content-type": "text/plain; charset=utf-8"}}
    stream = context.llm.chat.completions.create(
        model=MODEL, stream=True, max_tokens=max_tokens,
        messages=[{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": message}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content
