"""The smallest HTTP handler: what ``bench/invoke_overhead.py`` invokes, so that
everything it measures is the emulator's own cost."""


def handler(event, context):
    return {"statusCode": 200, "body": "ok"}
