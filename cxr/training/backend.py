"""What a training run asks of the Keras backend: precision, compilation, determinism.

cxr runs on whatever `KERAS_BACKEND` says (tensorflow by default, jax for speed on GPUs); models, losses
and metrics use `keras.ops` only. The few places that must know the backend are here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cxr.runtime.errors import CxrError

if TYPE_CHECKING:
    from cxr.config import TrainerConfig  # a type only: config sits above training

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
JAX_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"
DISTRIBUTIONS = ("none", "data_parallel")


def check_trainer(t: TrainerConfig) -> None:
    """trainer.precision, trainer.jit_compile and trainer.steps_per_execution, before anything is built."""
    if t.precision not in PRECISIONS:
        raise CxrError(f"trainer.precision={t.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if not (isinstance(t.jit_compile, bool) or t.jit_compile == "auto"):
        raise CxrError(f"trainer.jit_compile={t.jit_compile!r}: choose one of auto, true, false")
    steps = t.steps_per_execution
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise CxrError(f"trainer.steps_per_execution={steps!r}: give a whole number of batches, 1 or more")
    if t.distribution not in DISTRIBUTIONS:
        raise CxrError(f"trainer.distribution={t.distribution!r}: choose one of {', '.join(DISTRIBUTIONS)}")


def compile_options(t: TrainerConfig) -> dict:
    """The `model.compile` keyword arguments the trainer config sets."""
    return {"jit_compile": t.jit_compile, "steps_per_execution": t.steps_per_execution}


@contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Keras's global dtype policy set to `precision` while models are built, then restored.

    Layers keep the policy they were built with (a saved model records it), so the process, and the
    tests and runs after this one in it, go on in whatever policy they had.
    """
    import keras  # heavy: on use (cxr.config imports this module at start-up to check the trainer)

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextmanager
def distribution(kind: str) -> Iterator[int]:
    """Build, compile and fit inside this to train data-parallel (trainer.distribution); yields the
    number of replicas, by which the per-device batch is multiplied.

    `data_parallel` replicates the model on every local device with the backend's own engine and splits
    each global batch between them: `tf.distribute.MirroredStrategy` on TensorFlow (or the strategy
    `TF_CONFIG` asks for, `MultiWorkerMirroredStrategy`, across machines), `keras.distribution.DataParallel`
    on JAX (every process's devices once `jax.distributed` is initialised). The model keeps the strategy
    it was built under; what it saves loads without one.
    """
    if kind == "none":
        yield 1
        return
    import keras  # heavy: on use (cxr.config imports this module at start-up to check the trainer)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # only on the TensorFlow backend

        multi_worker = "TF_CONFIG" in os.environ
        strategy = _multi_worker_strategy() if multi_worker else tf.distribute.MirroredStrategy()
        with strategy.scope():
            yield strategy.num_replicas_in_sync
    elif backend == "jax":
        previous = keras.distribution.distribution()
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        try:
            yield len(devices)
        finally:
            keras.distribution.set_distribution(previous)
    else:
        raise CxrError(
            f"trainer.distribution={kind} is not supported on the {backend} backend; "
            "use KERAS_BACKEND=tensorflow or jax, or trainer.distribution=none"
        )


def is_chief(kind: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process owns the training's MLflow run, evaluation and model: in a TensorFlow
    multi-worker training (trainer.distribution=data_parallel with `TF_CONFIG` set) the task it names
    `chief`, else worker 0 (TensorFlow's own convention); any other process is its own chief.

    The other workers only train: their model is the chief's (the strategy keeps the replicas in sync).
    """
    import keras  # heavy: on use (cxr.config imports this module at start-up to check the trainer)

    raw = (os.environ if environ is None else environ).get("TF_CONFIG")
    if kind == "none" or not raw or keras.backend.backend() != "tensorflow":
        return True
    try:
        config = json.loads(raw)
        cluster, task = config.get("cluster", {}), config["task"]
        role, index = task["type"], int(task.get("index", 0))
    except (ValueError, TypeError, KeyError, AttributeError):
        raise CxrError(
            f"TF_CONFIG={raw!r} is not a TensorFlow cluster spec; set it to JSON such as "
            '{"cluster": {"worker": ["a:23456", "b:23456"]}, "task": {"type": "worker", "index": 0}} '
            "or unset it"
        ) from None
    return role == "chief" or (role == "worker" and index == 0 and "chief" not in cluster)


def local_model(model):
    """The model a multi-worker training's chief predicts with and logs: a copy outside the strategy.

    Predicting under `MultiWorkerMirroredStrategy` would shard the rows between the workers, which stop
    after fit; any other model is returned as it is.
    """
    import keras  # heavy: on use (cxr.config imports this module at start-up to check the trainer)

    if keras.backend.backend() != "tensorflow":
        return model
    import tensorflow as tf  # only on the TensorFlow backend

    if not isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _multi_worker_strategy():
    """`tf.distribute.MultiWorkerMirroredStrategy` whose `reduce` also takes a nest of values.

    Keras 3's TensorFlow trainer asks it for what it cannot do (keras-team/keras#20585): to build the model
    symbolically `fit` reduces its first (images, labels) batch, a nest, with uint8 images, which the
    collective ops lack (reduced in float32 and cast back); each step's scalar metrics are reduced along
    axis 0, which a scalar lacks (reduced across replicas only).
    """
    import tensorflow as tf  # only on the TensorFlow backend

    reducible = (tf.bfloat16, tf.float16, tf.float32, tf.float64, tf.int32, tf.int64)

    class NestedReduce(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            one = super().reduce

            def each(v):
                local = self.experimental_local_results(v)[0]
                along = None if local.shape.rank == 0 else axis
                if local.dtype in reducible:
                    return one(reduce_op, v, along)
                wide = self.run(lambda t: tf.cast(t, tf.float32), args=(v,))
                return tf.cast(one(reduce_op, wide, along), local.dtype)

            return tf.nest.map_structure(each, value)

    return NestedReduce()


def batch_multiple(replicas: int) -> int:
    """What every batch's size must be a multiple of: JAX shards each batch evenly between devices,
    where TensorFlow's strategy also splits an uneven last batch."""
    import keras  # heavy: on use (cxr.config imports this module at start-up to check the trainer)

    return replicas if keras.backend.backend() == "jax" else 1


def enable_determinism() -> None:
    """Bit-exact kernels where the backend offers them (trainer.deterministic=true).

    TensorFlow: op determinism. JAX: XLA's deterministic GPU ops, read when JAX starts its backend, so
    it takes effect in a fresh process (a `python -m cxr.train` run); on a CPU JAX is deterministic.
    """
    import keras  # heavy: on use (cxr.config imports this module at start-up to check the trainer)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # only on the TensorFlow backend

        tf.config.experimental.enable_op_determinism()
    elif backend == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        if JAX_DETERMINISM_FLAG not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {JAX_DETERMINISM_FLAG}".strip()


def backend_packages(backend: str) -> list[str]:
    """The packages a Keras backend needs at run time besides keras (what a logged model pins)."""
    return {"tensorflow": ["tensorflow"], "jax": ["jax", "jaxlib"], "torch": ["torch"]}.get(backend, [])


def check_loss(loss) -> None:
    """A loss with a running state (moving_average_bce) needs a backend that keeps it between batches.

    JAX's compiled train step carries the model's, the optimizer's and the metrics' variables, not a
    loss's own, so the state would silently stay at its start value.
    """
    import keras  # heavy: on use (cxr.config imports this module at start-up to check the trainer)

    backend = keras.backend.backend()
    if hasattr(loss, "training_callback") and backend == "jax":
        raise CxrError(
            f"loss={loss.name} keeps a running state that the {backend} backend's compiled train step drops; "
            "train it with KERAS_BACKEND=tensorflow or choose another loss (dynamic_bce is its stateless kin)"
        )
