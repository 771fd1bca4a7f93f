NAME = "test-layer"
