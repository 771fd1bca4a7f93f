"""llmfn: serverless functions with an LLM in their context.

One sub-package or module per role; imports flow one way, top to bottom
(``lint-imports`` checks it):

- ``cli`` (the ``llmfn`` command) and ``server`` (the one assembler: every
  command is a configuration of ``Server``);
- ``triggers``: HTTP routes, the Lambda Invoke API, S3 events, schedules;
- ``functions``: function instances, the dispatcher, the Runtime API;
- ``gateway``: the OpenAI-compatible HTTP API;
- ``pool`` (model pools, llama.cpp workers, the model store) and
  ``accounting`` (ledger, quotas, keys, reports);
- ``settings`` (the only reader of ``LLMFN_*``) and ``datadir``;
- ``template``: the one reader of ``template.yaml``;
- ``errors``, ``bundled`` (the layer and starters shipped with the package),
  ``embedded_s3``.
"""
