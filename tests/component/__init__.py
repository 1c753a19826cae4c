"""Component tests: the proxy on real loopback sockets, stdlib clients, scripted stores."""
