-- Runs once, when the MySQL container initialises its data directory.
-- The pipeline's user: reads the binlog (REPLICATION SLAVE/CLIENT) and creates test databases.
CREATE USER IF NOT EXISTS 'lablake'@'%' IDENTIFIED BY 'lablake';
GRANT ALL PRIVILEGES ON *.* TO 'lablake'@'%' WITH GRANT OPTION;
GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'lablake'@'%';
FLUSH PRIVILEGES;
