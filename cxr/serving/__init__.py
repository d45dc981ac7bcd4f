"""What ships: the logged MLflow pyfunc model (one Keras member or an ensemble, stored as code, not a
pickle) and its registration, batched inference over a dataset's splits or image files, Grad-CAM.

It imports training (the registered classes a saved model refers to), models, tracking, data and
runtime; nothing here computes metrics (that is `cxr.evaluation`).
"""
