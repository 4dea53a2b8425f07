"""`attribution serve`: the tallies, web-push subscriptions and conversions as a table in memory, an
HTTP API and a live page.

It reads the output topics (never the workers' Redis), so it scales and fails apart from them.
"""
