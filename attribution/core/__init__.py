"""Pure attribution rules: events, windows, basis per channel, dedupe per user, money, tallies. No I/O."""
