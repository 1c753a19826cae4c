"""IMAP4rev1/IMAP4rev2 pieces of the proxy: framing, grammar, replies and the two machines."""
