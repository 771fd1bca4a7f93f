"""Answers a question with the model in ``context.llm``."""


def handler(event, context):
    question = (event or {}).get("question", "Say hello in one short sentence.")
    reply = context.llm.chat.completions.create(
        model="gemma3-270m", messages=[{"role": "user", "content": question}], max_tokens=48)
    return {"answer": reply.choices[0].message.content, "usage": reply.usage.model_dump()}
