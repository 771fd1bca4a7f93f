"""LangChain inside a function with no configuration: ``ChatOpenAI()`` finds the
gateway through OPENAI_BASE_URL / OPENAI_API_KEY, which the runtime sets for
each invocation; its default model name is an alias of the embedded model."""
import json

from langchain_openai import ChatOpenAI


def handler(event, context):
    body = event.get("body") if isinstance(event, dict) and "body" in event else None
    data = json.loads(body) if body else (event or {})
    text = data.get("text", "Serverless functions run code on demand and scale to zero when idle.")
    llm = ChatOpenAI()
    answer = llm.invoke(f"Summarize in one sentence: {text}", max_tokens=int(data.get("max_tokens", 40)))
    result = {"summary": answer.content, "usage": answer.usage_metadata}
    if body is not None:  # called through the REST API: answer as a proxy response
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(result)}
    return result
