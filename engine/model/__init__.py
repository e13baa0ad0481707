"""The model as data: checkpoint and card, preprocessing, device policy, population rules, OOD score."""
