"""Greets the caller by name with a short sentence written by the model.

POST /hello with {"name": "Ada"}, or GET /hello?name=Ada (API Gateway HTTP API,
payload format 2.0)."""
import base64
import json

MODEL = "gemma3-270m"


def _name(event):
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    data = json.loads(body) if body.strip().startswith("{") else {}
    query = event.get("queryStringParameters") or {}
    return str(data.get("name") or query.get("name") or "world")


def handler(event, context):
    name = _name(event or {})
    # Gemma 3 270M is a base model: show it one greeting, then start the next one for it to finish.
    opening = f"Hello {name}!"
    prompt = ('Greeting cards:\nFor Tom: "Hello Tom! It is so good to see you, I hope your week went well."\n'
              f'For {name}: "{opening}')
    reply = context.llm.completions.create(model=MODEL, prompt=prompt, max_tokens=24, stop=["\n", '"'],
                                           temperature=0.7)
    greeting = f"{opening}{reply.choices[0].text}".strip()
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({"greeting": greeting, "usage": reply.usage.model_dump(exclude_none=True)})}
