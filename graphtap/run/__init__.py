"""What runs models, with TensorFlow and numpy: loaded only when a command needs it.

    runtime       loading a SavedModel to run it (custom ops first); random inputs
    verification  verify: a tapped model's outputs against the original's
    dumping       dump and activations: the tapped outputs over a data set
    stats         statistics of activations: partials computed in the graph or with numpy,
                  merged batch by batch (one merge)
    beam          dump as an Apache Beam pipeline (the `beam` extra; imports apache_beam)
    compare       compare: a tapped model against its TFLite/ONNX conversion or another
                  SavedModel, tap by tap, in graph order
    profiling     profile: a signature under TensorFlow's profiler
    export        save a Keras model or tf.Module and tap it, in one call
    commands      the command's verify, dump, profile and compare verbs
"""
