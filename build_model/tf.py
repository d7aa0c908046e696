"""TensorFlow with Keras 2 (tf_keras) for every variant.

tensorflow-model-optimization (QAT, pruning, clustering) only works with Keras 2,
and tf_keras also loads legacy .h5 files that Keras 3 rejects. So the whole build
side uses one Keras: the variable must be set before TensorFlow is imported.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings

from contract.capture import captured

# TensorFlow's C++ side logs at import (oneDNN, CUDA probing) before any setting can stop it.
with captured((2,)):
    import tensorflow as tf
    import tf_keras as keras

warnings.filterwarnings("ignore", message="Statistics for quantized inputs")

tf.get_logger().setLevel("ERROR")

__all__ = ["tf", "keras"]
