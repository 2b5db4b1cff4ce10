"""Pure tensor math for RL post-training (imports only torch): masked reductions (`masked`),
advantage estimators (`advantages`), policy, value and entropy losses (`policy_loss`), KL estimators
(`kl`) and coefficient controllers (`kl_control`), PPO's per-token rewards (`reward_shaping`), and
memory-bounded token log-probs / entropies (`logprobs`)."""
