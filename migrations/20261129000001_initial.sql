-- The deployment: one row, made on first start.
CREATE TABLE deployment (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    resource_id TEXT NOT NULL,
    primary_key TEXT NOT NULL,
    secondary_key TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Token signing keys (ES256, PKCS#8 DER), newest active one signs; all verify.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    pkcs8_der BLOB NOT NULL,
    public_point BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

-- Communication identities. revoked_at: tokens with iat <= revoked_at are refused (seconds).
CREATE TABLE identities (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- The demo identity-management sample: a name maps to one identity.
CREATE TABLE demo_users (
    name TEXT PRIMARY KEY,
    identity_id TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
