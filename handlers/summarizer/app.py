"""Summarizes documents uploaded under docs/ and writes summaries/<name>.

Documents longer than the model's context are cut into pieces that fit; each
piece is summarized, then the summaries are summarized again until one is
left (map, then reduce)."""
import os
import urllib.parse

import boto3

MODEL = "gemma3-270m"
PIECE_CHARS = 3000      # ~800 tokens: a piece, its prompt and the summary fit n_ctx 4096
SUMMARY_TOKENS = 80


def pieces(text, size=PIECE_CHARS):
    text, out = text.strip(), []
    while len(text) > size:
        # cut at the last paragraph, sentence or word break in the second half
        cut = max(text.rfind(sep, size // 2, size) for sep in ("\n\n", ". ", " "))
        cut = cut + 1 if cut > 0 else size
        out.append(text[:cut].strip())
        text = text[cut:].strip()
    return out + ([text] if text else [])


def summary_of(llm, text):
    # A base model continues text: the prompt ends where a summary starts.
    reply = llm.completions.create(model=MODEL, prompt=f"{text}\n\nIn short:", max_tokens=SUMMARY_TOKENS,
                                   stop=["\n\n"], temperature=0.3)
    return reply.choices[0].text.strip()


def summarize(llm, text):
    level = [summary_of(llm, p) for p in pieces(text)]
    rounds = 1
    while len(level) > 1:
        level = [summary_of(llm, p) for p in pieces("\n".join(level))]
        rounds += 1
    return (level[0] if level else ""), rounds


def handler(event, context):
    s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3"))
    results = []
    for record in event.get("Records", []):
        bucket = record["s3"]["bucket"]["name"]
        key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
        text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8", errors="replace")
        summary, rounds = summarize(context.llm, text)
        out = "summaries/" + key.removeprefix("docs/")
        s3.put_object(Bucket=bucket, Key=out, Body=summary.encode(), ContentType="text/plain; charset=utf-8")
        print(f"summarized s3://{bucket}/{key} ({len(text)} chars, {rounds} round(s)) into {out}")
        results.append({"source": key, "summary_key": out, "rounds": rounds})
    return {"summaries": results, "llm_usage": context.llm_usage.as_dict()}
