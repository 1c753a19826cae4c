-- A read-only account for the routers (the seed's nest_mail): SELECT on the
-- one table, nothing else.  Perdition's perditiondb_mysql_makedb GRANTs ALL on
-- the database; authsvc needs only to read.
--
-- Edit the host (each front-end node's address, or a network such as
-- '10.0.0.%') and the password, then:   mariadb < deploy/grant-readonly.sql
-- Give authsvc the password in a file (map.mysql.password_file, mode 0600)
-- rather than in a Perdition map_library_opt string.

CREATE USER IF NOT EXISTS `nest_mail`@`127.0.0.1` IDENTIFIED BY 'CHANGE-ME';
GRANT SELECT ON `nest`.`mailboxes` TO `nest_mail`@`127.0.0.1`;

-- With a primary and replicas in the map's hosts, the replica lag check asks
-- each host SHOW REPLICA STATUS, which needs REPLICA MONITOR (a global
-- privilege, MariaDB 10.5.9 and later; docs/maps.md, "Failover and failback").
-- Without it the check is off and authsvc says so once in its log:
-- GRANT REPLICA MONITOR ON *.* TO `nest_mail`@`127.0.0.1`;
