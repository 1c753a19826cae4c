"""POP3 pieces of the proxy: replies and the two machines (RFC 1939, 2449, 2595, 5034)."""
