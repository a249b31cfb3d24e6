"""The network: input preparation, training targets, Res-MTNet, checkpoints and sliding-window inference."""
