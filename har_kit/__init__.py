__version__ = "0.1.0"

def __getattr__(name):
    "The model-file API at the top level (`har_kit.load_model`), imported on first use so `import har_kit` stays light."
    if name in ('load_model', 'save_model'):
        from har_kit import model_file
        return getattr(model_file, name)
    if name == 'Predictor':
        from har_kit import predict
        return predict.Predictor
    raise AttributeError(f"module 'har_kit' has no attribute {name!r}")

def __dir__():
    "The top-level names, the lazily imported ones included (tab completion finds `har_kit.Predictor`)."
    return sorted([*globals(), 'load_model', 'save_model', 'Predictor'])
