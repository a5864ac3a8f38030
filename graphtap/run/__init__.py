"""What runs models, with TensorFlow and numpy: loaded only when a command needs it.

    runtime       loading a SavedModel to run it (custom ops first); random inputs
    verification  verify: a tapped model's outputs against the original's
    dumping       dump and activations: the tapped outputs over a data set
    stats         statistics of activations, merged batch by batch
    profiling     profile: a signature under TensorFlow's profiler
    export        save a Keras model or tf.Module and tap it, in one call
    commands      the command's verify, dump and profile verbs
"""
