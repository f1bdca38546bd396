"""`--mode=finetune`: reward fine-tuning of a trained model (loop, policy gradient, rewards,
reports). It samples with sample/ and scores with evaluation/'s statistics: it sits above both.
"""
