-- 050: what each batch's transaction paid (owner: minter, issue 19). Derived from the signed bytes:
-- the SetComputeUnitLimit / SetComputeUnitPrice instructions it carries and the fee they imply
-- (5,000 lamports per signature + ceil(limit x price / 1e6)). Written when the batch is signed or
-- re-signed and again when it confirms, so a confirmed batch records the fee of the signature that landed.

ALTER TABLE mint_batches
    ADD COLUMN compute_unit_limit  INTEGER,
    ADD COLUMN compute_unit_price  BIGINT,   -- micro-lamports per compute unit
    ADD COLUMN fee_lamports        BIGINT;
