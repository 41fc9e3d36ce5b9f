"""The cloud's HTTP and WebSocket API (`gridtokenx cloud api`): readings in, reads, admin, live events."""
