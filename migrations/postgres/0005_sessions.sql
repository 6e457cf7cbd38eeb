-- Browser sessions: a bearer token is exchanged once for an HttpOnly,
-- SameSite=Strict cookie, so page scripts never hold a long-lived secret
-- and the live stream (EventSource) authenticates without a URL secret.
-- Hash only, like tokens; a session dies with its token.
CREATE TABLE api_sessions (
    session_hash bytea PRIMARY KEY CHECK (length(session_hash) = 32),
    token_id     bigint NOT NULL REFERENCES api_tokens (token_id),
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    ended_at     timestamptz
);
CREATE INDEX api_sessions_expiry ON api_sessions (expires_at);
