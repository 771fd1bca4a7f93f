"""Test functions with one behaviour each, for the runtime's end-to-end tests."""
import asyncio
import os
import time

import lib_from_layer  # from the layer folder: proves Layers are on the path

IMPORTED_AT = time.time()


def pid(event, context):
    return {"pid": os.getpid(), "imported_at": IMPORTED_AT, "layer": lib_from_layer.NAME,
            "request_id": context.aws_request_id, "function_name": context.function_name,
            "memory": context.memory_limit_in_mb, "remaining_ms": context.get_remaining_time_in_millis(),
            "arn": context.invoked_function_arn, "log_group": context.log_group_name,
            "env": os.environ.get("GREETING"), "openai_base_url": os.environ.get("OPENAI_BASE_URL")}


def boom(event, context):
    raise ValueError(f"bad input: {event.get('x')}")


def sleepy(event, context):
    time.sleep(float(event.get("seconds", 10)))
    return {"slept": event.get("seconds"), "pid": os.getpid()}


async def async_handler(event, context):
    await asyncio.sleep(0.05)
    reply = await context.allm.completions.create(model="gemma3-270m", prompt="Hello", max_tokens=3)
    return {"async": True, "text": reply.choices[0].text, "usage": reply.usage.model_dump(exclude_none=True)}


def calls(event, context):
    """Makes the LLM calls the event asks for and returns each call's usage."""
    usages = []
    for i in range(int(event.get("n", 2))):
        reply = context.llm.completions.create(model="gemma3-270m", prompt=f"Count {i}:", max_tokens=4)
        usages.append(reply.usage.model_dump(exclude_none=True))
    stream = context.llm.chat.completions.create(
        model="gemma3-270m", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True,
        stream_options={"include_usage": True})
    final = [c for c in stream if c.usage is not None][-1]
    usages.append(final.usage.model_dump(exclude_none=True))
    return {"usages": usages, "so_far": context.llm_usage.as_dict()}


def leak_token(event, context):
    """Returns its invocation token so a test can try it after the invocation ends."""
    return {"token": os.environ["OPENAI_API_KEY"], "base_url": os.environ["OPENAI_BASE_URL"]}


def http_echo(event, context):
    return {"statusCode": 201, "headers": {"x-route": event.get("routeKey", ""), "content-type": "application/json"},
            "cookies": ["a=1", "b=2"],
            "body": __import__("json").dumps({"version": event.get("version"), "rawPath": event.get("rawPath"),
                                              "query": event.get("queryStringParameters"),
                                              "pathParameters": event.get("pathParameters"),
                                              "method": event.get("httpMethod") or event["requestContext"]["http"]["method"],
                                              "body": event.get("body")})}


def plain_dict(event, context):
    return {"hello": "world"}


def streamer(event, context):
    yield {"statusCode": 200, "headers": {"content-type": "text/plain"}}
    for i in range(5):
        yield f"part{i};"
        time.sleep(0.05)


def forbidden_call(event, context):
    """Calls a model this function is not allowed to use."""
    import openai
    try:
        context.llm.completions.create(model="gemma3-270m", prompt="hi", max_tokens=1)
    except openai.APIStatusError as exc:
        return {"status": exc.status_code, "type": exc.body.get("type"), "message": exc.body.get("message")}
    return {"status": 200}


def budgeted(event, context):
    """Spends from its daily budget and reports what is left."""
    import openai
    before = context.get_remaining_tokens()
    try:
        reply = context.llm.completions.create(model="gemma3-270m", prompt="One, two,", max_tokens=8)
        used = reply.usage.total_tokens
    except openai.RateLimitError as exc:
        return {"refused": exc.body.get("code"), "message": exc.body.get("message"), "before": before}
    return {"before": before, "used": used, "after": context.get_remaining_tokens()}
