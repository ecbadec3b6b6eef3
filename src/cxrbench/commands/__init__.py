"""One module per command group; each exposes ``register(app)``."""

from cxrbench.commands import (
    compare,
    demo,
    describe,
    evaluate,
    export,
    index,
    phantom,
    predict,
    prepare,
    study,
    train,
    weights,
)

COMMAND_MODULES = (phantom, index, prepare, describe, train, evaluate, compare, predict, export, study, demo,
                   weights)
