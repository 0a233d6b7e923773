"""Targets, accounts, policies, requests, approvals and grants (built in a later step)."""
