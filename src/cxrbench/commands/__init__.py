"""One module per command group; each exposes ``register(app)``."""

from cxrbench.commands import (
    audit,
    compare,
    demo,
    describe,
    evaluate,
    export,
    index,
    phantom,
    predict,
    prepare,
    pretrain,
    shortcut,
    study,
    train,
    weights,
)

COMMAND_MODULES = (phantom, index, prepare, describe, pretrain, train, evaluate, compare, shortcut, predict,
                   audit, export, study, demo, weights)
