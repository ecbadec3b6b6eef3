"""One module per command group; each exposes ``register(app)``."""

from cxrbench.commands import (
    audit,
    compare,
    demo,
    describe,
    evaluate,
    index,
    phantom,
    predict,
    prepare,
    pretrain,
    study,
    train,
    weights,
)

COMMAND_MODULES = (phantom, index, prepare, describe, pretrain, train, evaluate, compare, predict, audit,
                   study, demo, weights)
