"""Summarizes a text file when it lands in the bucket under docs/, and writes the
summary to summaries/<name>.txt in the same bucket.

Try it without S3: an event {"text": "..."} (events/event.json) is summarized the
same way, and the summary comes back in the result instead of going to a bucket."""
import os
import urllib.parse

import boto3

MODEL = "gemma3-270m"
# About 400 tokens of English: a chunk, the prompt and the summary fit the pool's
# n_ctx (2048) with room to spare.
CHUNK_CHARS = 1500
SUMMARY_TOKENS = 64


def split_text(text, size=CHUNK_CHARS):
    """Pieces of at most ``size`` characters, cut at a paragraph, line, sentence or
    word break when there is one in the second half of the piece."""
    pieces, text = [], text.strip()
    while len(text) > size:
        cut = next((i + len(sep) for sep in ("\n\n", "\n", ". ", " ")
                    if (i := text.rfind(sep, size // 2, size)) != -1), size)
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    return pieces + [text] if text else pieces


def summarize_piece(llm, text):
    # Gemma 3 270M is a base model: it continues text, so the prompt ends where a summary begins.
    reply = llm.completions.create(model=MODEL, prompt=f"{text}\n\nTL;DR:", max_tokens=SUMMARY_TOKENS,
                                   stop=["\n"], temperature=0.2)
    summary = reply.choices[0].text.strip()
    return summary[:1].upper() + summary[1:]


def summarize(llm, text):
    """Summarize each chunk, then the summaries, until one is left; returns (summary, chunks)."""
    pieces = split_text(text)
    summaries = [summarize_piece(llm, piece) for piece in pieces]
    while len(summaries) > 1:
        summaries = [summarize_piece(llm, piece) for piece in split_text("\n".join(summaries))]
    return (summaries[0] if summaries else ""), len(pieces)


def handler(event, context):
    if "text" in event:  # try it without S3
        summary, chunks = summarize(context.llm, event["text"])
        return {"summary": summary, "summary_key": None, "chunks": chunks, "usage": context.llm_usage.as_dict()}

    # S3 sends one record per notification; object keys arrive URL-encoded.
    record = event["Records"][0]["s3"]
    bucket, key = record["bucket"]["name"], urllib.parse.unquote_plus(record["object"]["key"])
    s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3"))
    text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8", errors="replace")
    summary, chunks = summarize(context.llm, text)
    summary_key = "summaries/" + key.removeprefix("docs/")  # docs/a/b.txt -> summaries/a/b.txt
    s3.put_object(Bucket=bucket, Key=summary_key, Body=summary.encode(), ContentType="text/plain; charset=utf-8")
    return {"summary": summary, "summary_key": summary_key, "chunks": chunks, "usage": context.llm_usage.as_dict()}
