"""Peers of the upstream-proxy benchmark: Starlette proxy apps and nginx/HAProxy templates."""
