"""The files of a release bundle, by name (the bundle stage writes them; the model card lists them)."""

ORT_FILE = "model.ort"
OPERATORS_FILE = "required_operators.config"
TOKENIZER_MODEL_FILE = "model_with_tokenizer.onnx"
METADATA_FILE = "edgeslim.json"
CARD_FILE = "README.md"
GENAI_FILE = "genai_config.json"
