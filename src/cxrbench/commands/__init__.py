"""One module per command group; each exposes ``register(app)``."""

from cxrbench.commands import (
    compare,
    demo,
    describe,
    evaluate,
    index,
    phantom,
    predict,
    prepare,
    shortcut,
    study,
    train,
    weights,
)

COMMAND_MODULES = (phantom, index, prepare, describe, train, evaluate, compare, shortcut, predict, study,
                   demo, weights)
