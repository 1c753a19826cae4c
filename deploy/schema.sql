-- The seed deployment's routing table (riseup.net "nest"): one row per mailbox,
-- the address a login is normalised to, and the store that holds it.
--
--   mariadb < deploy/schema.sql
--
-- Perdition's seed map_library_opt reads it as
--   dbhost:3306:nest:mailboxes:nest_mail:PASSWORD:storage_ip:address:143
-- i.e. SELECT storage_ip FROM mailboxes WHERE address = ?, port 143 (110 for POP3).
--
-- Matching is the column's collation's business (docs/maps.md):
-- utf8mb4_bin compares case-sensitively, like a map file, but it is a PAD SPACE
-- collation, so 'bob@riseup.net ' still matches 'bob@riseup.net'.  Use
-- utf8mb4_nopad_bin for byte-exact keys, or a _ci collation to match any case.
-- storage_ip may carry ':port' (it wins over the constant port) or 'user@'.

CREATE DATABASE IF NOT EXISTS `nest` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;

CREATE TABLE IF NOT EXISTS `nest`.`mailboxes` (
  `address` varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  `storage_ip` varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL,
  PRIMARY KEY (`address`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
