"""Once a day, writes a digest of yesterday's LLM usage: the numbers from the
gateway's usage report, and a sentence the model writes about them.

The function may read every resource's usage because its template entry says
``usage_access: all``; its invocation token (OPENAI_API_KEY) carries that."""
import datetime
import json
import os
import urllib.request

import boto3

MODEL = "gemma3-270m"


def usage_report(days=1):
    origin = os.environ["OPENAI_BASE_URL"].removesuffix("/v1")
    req = urllib.request.Request(f"{origin}/v1/usage?since={days}d&by=resource",
                                 headers={"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def handler(event, context):
    report = usage_report()
    totals = report["totals"]
    lines = [f"{r['service_type']} {r['resource']}: {r['calls']} calls, "
             f"{r['input_tokens']} in / {r['output_tokens']} out" for r in report["rows"]]
    facts = "; ".join(lines) or "no calls"
    reply = context.llm.completions.create(
        model=MODEL, max_tokens=48, stop=["\n"], temperature=0.3,
        prompt=f"Usage report: {totals['calls']} LLM calls ({totals['failure']} failed), "
               f"{totals['input_tokens']} input and {totals['output_tokens']} output tokens. {facts}.\n"
               f"Summary for the team:")
    day = (event or {}).get("time", datetime.datetime.now(datetime.UTC).isoformat())[:10]
    digest = {"day": day, "totals": totals, "resources": lines, "note": reply.choices[0].text.strip()}
    bucket = os.environ.get("DIGEST_BUCKET")
    if bucket:
        boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3")).put_object(
            Bucket=bucket, Key=f"digests/{day}.json", Body=json.dumps(digest, indent=2).encode())
    return digest
