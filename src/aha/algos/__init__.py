"""Pure tensor math for RL post-training (imports only torch): masked reductions (`masked`),
advantage estimators (`advantages`), policy and value losses (`policy_loss`), KL estimators (`kl`),
and memory-bounded token log-probs / entropies (`logprobs`)."""
