from cxr.runtime.builders import Builders

MODELS: Builders = Builders("model")
