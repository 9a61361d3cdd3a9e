"""The StratusVault API contract (``stratus.v1``) and the code generated from it."""
