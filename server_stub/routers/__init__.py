"""One router per domain; each is thin: validate, check scope, call a service."""
