"""llmfn: serverless functions with an LLM in their context.

Sub-packages, one per role (imports flow one way, top to bottom):
``cli`` -> ``triggers``, ``functions`` -> ``gateway`` -> ``pool``,
``accounting`` -> ``app``, ``settings``, ``errors``.
"""
