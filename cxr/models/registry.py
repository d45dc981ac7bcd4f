from cxr.registry import Registry

MODELS: Registry = Registry("model")
