"""Several LLM calls in one invocation: personas answer in turn, each one
seeing what the others said before it."""

import json

MODEL = "gemma3-270m"
# A base model continues text: each persona's turn starts with its opening words.
PERSONAS = [("Optimist", "I think"), ("Skeptic", "I doubt"), ("Engineer", "To build it,")]


def _params(event):
    """Invoked directly, the event holds the parameters; over HTTP, its JSON body does."""
    event = event or {}
    if "body" in event and "requestContext" in event:
        return json.loads(event.get("body") or "{}")
    return event


def handler(event, context):
    params = _params(event)
    topic = params.get("topic", "robots that cook dinner")
    max_tokens = int(params.get("max_tokens", 24))
    transcript = f"Three friends discuss {topic}.\n"
    turns = []
    for name, opening in PERSONAS:
        reply = context.llm.completions.create(
            model=MODEL, prompt=f"{transcript}{name}: {opening}", max_tokens=max_tokens,
            stop=["\n"], temperature=0.8)
        text = f"{opening}{reply.choices[0].text}".strip()
        turns.append({"persona": name, "text": text, "usage": reply.usage.model_dump(exclude_none=True)})
        transcript += f"{name}: {text}\n"
    return {"topic": topic, "turns": turns, "llm_usage": context.llm_usage.as_dict()}
