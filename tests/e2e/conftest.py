from tests.integration.conftest import model_cache  # noqa: F401  (shared session fixture)
