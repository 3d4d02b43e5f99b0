//! Table descriptions: a TABLE_MAP event (plus, when its optional metadata
//! is incomplete, information_schema data) to a [`TableInfo`] that says how to
//! decode every column and what the change events' [`TableSchema`] is.

use std::collections::HashSet;
use std::sync::Arc;

use lablake_model::{Column, ColumnType, TableSchema};
use mysql_common::binlog::events::TableMapEvent;
use mysql_common::constants::ColumnType as MyType;
use mysql_common::proto::MySerialize;

use super::charset::Charset;
use super::decimal;
use super::reader::{ReadResult, Reader};
use crate::MysqlError;

/// Which server family wrote the binlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    MySql,
    MariaDb,
}

impl Flavor {
    /// The flavor named by a server version string (`10.11.6-MariaDB-log`).
    pub fn from_server_version(version: &str) -> Flavor {
        if version.to_ascii_lowercase().contains("mariadb") { Flavor::MariaDb } else { Flavor::MySql }
    }
}

/// One column as information_schema describes it (the fallback when the
/// TABLE_MAP event carries minimal metadata, and the only source of MariaDB's
/// JSON columns, which are LONGTEXT with a `json_valid` check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    /// `COLUMNS.COLUMN_NAME`.
    pub name: String,
    /// `COLUMNS.DATA_TYPE`, e.g. `int`, `enum`, `longtext`, `json`.
    pub data_type: String,
    /// `COLUMNS.COLUMN_TYPE`, e.g. `int(10) unsigned`, `enum('a','b')`.
    pub column_type: String,
    /// `COLUMNS.CHARACTER_SET_NAME` (`None` for non-character columns).
    pub charset: Option<String>,
    /// Declared JSON (`DATA_TYPE = 'json'`) or guarded by `CHECK (json_valid(col))`.
    pub is_json: bool,
    /// `COLUMNS.IS_NULLABLE = 'YES'`.
    pub nullable: bool,
}

/// A table as information_schema describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CatalogTable {
    /// Columns in ordinal order. Empty when the table no longer exists.
    pub columns: Vec<CatalogColumn>,
    /// Primary-key column names in key order.
    pub primary_key: Vec<String>,
}

/// Whether building a [`TableInfo`] from a table map needs information_schema data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogNeed {
    /// The table map is self-sufficient.
    None,
    /// The table map is decodable, but information_schema would improve it
    /// (MariaDB: which text columns are JSON).
    Optional,
    /// The table map lacks something essential (named in the string).
    Required(String),
}

/// How one column's binlog value is decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Int {
        bytes: u8,
        unsigned: bool,
    },
    Float,
    Double,
    Decimal {
        precision: u8,
        scale: u8,
    },
    Year,
    Date,
    TimeV1,
    Time2 {
        fsp: u8,
    },
    DateTimeV1,
    DateTime2 {
        fsp: u8,
    },
    TimestampV1,
    Timestamp2 {
        fsp: u8,
    },
    Bit {
        bits: u16,
    },
    Enum {
        pack: u8,
        labels: Arc<[String]>,
    },
    Set {
        pack: u8,
        labels: Arc<[String]>,
    },
    /// CHAR/BINARY, VARCHAR/VARBINARY, TEXT/BLOB. `pad_to` re-pads BINARY(n)
    /// values (the binlog strips trailing zero bytes). `json` marks MariaDB
    /// JSON (text) columns.
    Str {
        prefix: u8,
        charset: Charset,
        json: bool,
        pad_to: Option<usize>,
    },
    /// MySQL binary JSON with a length prefix.
    Json {
        prefix: u8,
    },
    /// GEOMETRY, VECTOR: raw bytes with a length prefix.
    Raw {
        prefix: u8,
    },
}

impl Kind {
    fn column_type(&self) -> ColumnType {
        match self {
            Kind::Int { bytes, unsigned } => ColumnType::Int { bytes: *bytes, unsigned: *unsigned },
            Kind::Float => ColumnType::Float,
            Kind::Double => ColumnType::Double,
            Kind::Decimal { precision, scale } => ColumnType::Decimal { precision: *precision, scale: *scale },
            Kind::Year => ColumnType::Year,
            Kind::Date => ColumnType::Date,
            Kind::TimeV1 | Kind::Time2 { .. } => ColumnType::Time,
            Kind::DateTimeV1 | Kind::DateTime2 { .. } => ColumnType::DateTime,
            Kind::TimestampV1 | Kind::Timestamp2 { .. } => ColumnType::Timestamp,
            Kind::Bit { bits } => ColumnType::Bit { bits: *bits },
            Kind::Enum { .. } => ColumnType::Enum,
            Kind::Set { .. } => ColumnType::Set,
            Kind::Str { json: true, .. } | Kind::Json { .. } => ColumnType::Json,
            Kind::Str { charset, .. } if charset.is_text() => ColumnType::String,
            Kind::Str { .. } | Kind::Raw { .. } => ColumnType::Bytes,
        }
    }
}

/// Everything needed to decode the rows events of one table map.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub database: Arc<str>,
    pub table: Arc<str>,
    /// The schema carried by every change event of this table.
    pub schema: Arc<TableSchema>,
    /// The table has no primary key: `schema.primary_key` lists every column.
    pub key_is_all_columns: bool,
    /// Columns whose charset this crate cannot decode (captured as bytes).
    pub undecodable_charset_columns: Vec<String>,
    pub(crate) kinds: Vec<Kind>,
    /// Indexes of MySQL binary JSON columns, in column order (partial updates).
    pub(crate) json_columns: Vec<usize>,
}

impl TableInfo {
    /// `database.table`, as used in errors and logs.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }

    /// Builds the decoding description of a table map, using `catalog` (from
    /// information_schema) for whatever the optional metadata lacks.
    pub fn from_table_map(
        tme: &TableMapEvent<'_>,
        catalog: Option<&CatalogTable>,
        flavor: Flavor,
    ) -> Result<TableInfo, MysqlError> {
        let meta = TableMeta::read(tme, flavor)?;
        let qualified = format!("{}.{}", meta.database, meta.table);
        let catalog = catalog.filter(|c| !c.columns.is_empty());
        let missing = |reason: String| MysqlError::MissingMetadata { table: qualified.clone(), reason };

        // Align catalog columns with the table map: by name when the table map
        // has names, by position otherwise.
        let cat_cols: Vec<Option<&CatalogColumn>> = match (catalog, &meta.names) {
            (None, _) => vec![None; meta.types.len()],
            (Some(c), Some(names)) => names
                .iter()
                .map(|n| {
                    c.columns
                        .iter()
                        .find(|cc| cc.name == *n)
                        .or_else(|| c.columns.iter().find(|cc| cc.name.eq_ignore_ascii_case(n)))
                })
                .collect(),
            (Some(c), None) => {
                if c.columns.len() != meta.types.len() {
                    return Err(missing(format!(
                        "the table map has {} columns but information_schema lists {} (table altered since the event, or \
                         hidden columns); set binlog_row_metadata=FULL",
                        meta.types.len(),
                        c.columns.len()
                    )));
                }
                c.columns.iter().map(Some).collect()
            }
        };

        let names: Vec<String> = match &meta.names {
            Some(n) => n.clone(),
            None if catalog.is_some() => cat_cols.iter().flatten().map(|c| c.name.clone()).collect(),
            None => {
                return Err(missing(
                    "the TABLE_MAP event has no column names (binlog_row_metadata=MINIMAL)".to_owned(),
                ));
            }
        };

        let mut kinds = Vec::with_capacity(meta.types.len());
        let mut undecodable = Vec::new();
        let mut numeric_i = 0usize;
        let mut char_i = 0usize;
        let mut enum_i = 0usize;
        let mut set_i = 0usize;
        for (i, (ty, colmeta)) in meta.types.iter().zip(&meta.metas).enumerate() {
            let name = &names[i];
            let cat = cat_cols[i];
            let bad = |reason: String| MysqlError::decode(&qualified, name, reason);
            let m = |k: usize| colmeta.get(k).copied().ok_or_else(|| bad("short column metadata".to_owned()));
            if let Some(c) = cat
                && !catalog_type_matches(*ty, c)
            {
                return Err(missing(format!(
                    "column `{name}` is {ty:?} in the table map but `{}` in information_schema (table altered since \
                     the event?)",
                    c.column_type
                )));
            }
            let unsigned = if is_signedness_column(*ty) {
                let bit = meta.signedness.as_ref().and_then(|s| s.get(numeric_i).copied());
                numeric_i += 1;
                match (bit, cat) {
                    (Some(b), _) => b,
                    (None, Some(c)) => c.column_type.to_ascii_lowercase().contains("unsigned"),
                    (None, None) => false,
                }
            } else {
                false
            };
            let charset = if is_charset_column(*ty, flavor) {
                let id = meta.charsets.as_ref().and_then(|c| c.get(char_i).copied());
                char_i += 1;
                match (id, cat) {
                    (Some(id), _) => Some(Charset::from_collation_id(id)),
                    (None, Some(c)) => Some(c.charset.as_deref().map_or(Charset::Binary, Charset::from_name)),
                    (None, None) => None,
                }
            } else {
                None
            };
            // MariaDB JSON is LONGTEXT: only text columns can be JSON.
            let json_text =
                flavor == Flavor::MariaDb && cat.is_some_and(|c| c.is_json) && charset.is_some_and(|c| c.is_text());
            let mut text_charset = |cs: Option<Charset>| -> Result<Charset, MysqlError> {
                let cs = cs.ok_or_else(|| missing(format!("no charset for column `{name}`")))?;
                if cs == Charset::Unsupported {
                    undecodable.push(name.clone());
                }
                Ok(cs)
            };
            let kind = match ty {
                MyType::MYSQL_TYPE_TINY => Kind::Int { bytes: 1, unsigned },
                MyType::MYSQL_TYPE_SHORT => Kind::Int { bytes: 2, unsigned },
                MyType::MYSQL_TYPE_INT24 => Kind::Int { bytes: 3, unsigned },
                MyType::MYSQL_TYPE_LONG => Kind::Int { bytes: 4, unsigned },
                MyType::MYSQL_TYPE_LONGLONG => Kind::Int { bytes: 8, unsigned },
                MyType::MYSQL_TYPE_FLOAT => Kind::Float,
                MyType::MYSQL_TYPE_DOUBLE => Kind::Double,
                MyType::MYSQL_TYPE_NEWDECIMAL => {
                    let (precision, scale) = (m(0)?, m(1)?);
                    decimal::check_precision(precision, scale).map_err(bad)?;
                    Kind::Decimal { precision, scale }
                }
                MyType::MYSQL_TYPE_YEAR => Kind::Year,
                MyType::MYSQL_TYPE_DATE | MyType::MYSQL_TYPE_NEWDATE => Kind::Date,
                MyType::MYSQL_TYPE_TIME => Kind::TimeV1,
                MyType::MYSQL_TYPE_TIME2 => Kind::Time2 { fsp: fsp(m(0)?).map_err(bad)? },
                MyType::MYSQL_TYPE_DATETIME => Kind::DateTimeV1,
                MyType::MYSQL_TYPE_DATETIME2 => Kind::DateTime2 { fsp: fsp(m(0)?).map_err(bad)? },
                MyType::MYSQL_TYPE_TIMESTAMP => Kind::TimestampV1,
                MyType::MYSQL_TYPE_TIMESTAMP2 => Kind::Timestamp2 { fsp: fsp(m(0)?).map_err(bad)? },
                MyType::MYSQL_TYPE_BIT => {
                    let bits = u16::from(m(1)?) * 8 + u16::from(m(0)?);
                    if bits == 0 || bits > 64 {
                        return Err(bad(format!("BIT({bits}) out of range")));
                    }
                    Kind::Bit { bits }
                }
                MyType::MYSQL_TYPE_ENUM => {
                    let pack = m(1)?;
                    if !(1..=2).contains(&pack) {
                        return Err(bad(format!("ENUM pack length {pack}")));
                    }
                    let labels = meta.enum_labels.as_ref().and_then(|l| l.get(enum_i)).cloned();
                    enum_i += 1;
                    let labels = match (labels, cat) {
                        (Some(l), _) => l,
                        (None, Some(c)) => parse_labels(&c.column_type, "enum")
                            .ok_or_else(|| missing(format!("cannot parse ENUM labels of `{name}`")))?,
                        (None, None) => return Err(missing(format!("no ENUM labels for column `{name}`"))),
                    };
                    Kind::Enum { pack, labels: labels.into() }
                }
                MyType::MYSQL_TYPE_SET => {
                    let pack = m(1)?;
                    if !(1..=8).contains(&pack) {
                        return Err(bad(format!("SET pack length {pack}")));
                    }
                    let labels = meta.set_labels.as_ref().and_then(|l| l.get(set_i)).cloned();
                    set_i += 1;
                    let labels = match (labels, cat) {
                        (Some(l), _) => l,
                        (None, Some(c)) => parse_labels(&c.column_type, "set")
                            .ok_or_else(|| missing(format!("cannot parse SET labels of `{name}`")))?,
                        (None, None) => return Err(missing(format!("no SET labels for column `{name}`"))),
                    };
                    if labels.len() > usize::from(pack) * 8 {
                        return Err(bad("more SET labels than bits".to_owned()));
                    }
                    Kind::Set { pack, labels: labels.into() }
                }
                MyType::MYSQL_TYPE_VARCHAR | MyType::MYSQL_TYPE_VAR_STRING => {
                    let max = u16::from_le_bytes([m(0)?, m(1)?]);
                    let charset = text_charset(charset)?;
                    Kind::Str { prefix: if max < 256 { 1 } else { 2 }, charset, json: json_text, pad_to: None }
                }
                MyType::MYSQL_TYPE_STRING => {
                    let (b0, b1) = (m(0)?, m(1)?);
                    let max = if b0 & 0x30 != 0x30 {
                        usize::from(b1) | (usize::from((b0 & 0x30) ^ 0x30) << 4)
                    } else {
                        usize::from(b1)
                    };
                    let charset = text_charset(charset)?;
                    let pad_to = (charset == Charset::Binary).then_some(max);
                    Kind::Str { prefix: if max < 256 { 1 } else { 2 }, charset, json: json_text, pad_to }
                }
                MyType::MYSQL_TYPE_BLOB
                | MyType::MYSQL_TYPE_TINY_BLOB
                | MyType::MYSQL_TYPE_MEDIUM_BLOB
                | MyType::MYSQL_TYPE_LONG_BLOB => {
                    let prefix = blob_prefix(m(0)?).map_err(bad)?;
                    let charset = text_charset(charset)?;
                    Kind::Str { prefix, charset, json: json_text, pad_to: None }
                }
                MyType::MYSQL_TYPE_JSON => Kind::Json { prefix: blob_prefix(m(0)?).map_err(bad)? },
                MyType::MYSQL_TYPE_GEOMETRY | MyType::MYSQL_TYPE_VECTOR => {
                    Kind::Raw { prefix: blob_prefix(m(0)?).map_err(bad)? }
                }
                other => return Err(bad(format!("unsupported column type {other:?}"))),
            };
            kinds.push(kind);
        }

        let mut key: Vec<usize> = match &meta.primary_key {
            Some(pk) => pk.clone(),
            None => match catalog {
                Some(c) => c
                    .primary_key
                    .iter()
                    .map(|k| {
                        names
                            .iter()
                            .position(|n| n.eq_ignore_ascii_case(k))
                            .ok_or_else(|| missing(format!("primary-key column `{k}` is not in the table map")))
                    })
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            },
        };
        if key.iter().any(|k| *k >= kinds.len()) {
            return Err(MysqlError::decode(&qualified, "PRIMARY KEY", "primary-key index out of range"));
        }
        let mut seen = HashSet::new();
        key.retain(|k| seen.insert(*k));
        let key_is_all_columns = key.is_empty();
        if key_is_all_columns {
            key = (0..kinds.len()).collect();
        }

        let columns = names
            .iter()
            .zip(&kinds)
            .zip(&meta.nullable)
            .map(|((name, kind), nullable)| Column { name: name.clone(), ty: kind.column_type(), nullable: *nullable })
            .collect();
        let json_columns =
            meta.types.iter().enumerate().filter(|(_, t)| **t == MyType::MYSQL_TYPE_JSON).map(|(i, _)| i).collect();
        Ok(TableInfo {
            database: meta.database.into(),
            table: meta.table.into(),
            schema: TableSchema::new(columns, key),
            key_is_all_columns,
            undecodable_charset_columns: undecodable,
            kinds,
            json_columns,
        })
    }

    /// The decoding description of a table from information_schema alone
    /// (snapshot reads, which have no table map). The schema equals the one
    /// [`TableInfo::from_table_map`] builds for the same table definition, so
    /// snapshot rows and streamed rows share a schema fingerprint.
    pub fn from_catalog(
        database: &str,
        table: &str,
        catalog: &CatalogTable,
        flavor: Flavor,
    ) -> Result<TableInfo, MysqlError> {
        let qualified = format!("{database}.{table}");
        let mut kinds = Vec::with_capacity(catalog.columns.len());
        let mut undecodable = Vec::new();
        let mut json_columns = Vec::new();
        for (i, c) in catalog.columns.iter().enumerate() {
            let bad = |reason: String| MysqlError::decode(&qualified, &c.name, reason);
            let ct = c.column_type.to_ascii_lowercase();
            let unsigned = ct.contains("unsigned");
            // `decimal(10,2)` → [10, 2]; `datetime(3)` → [3].
            let args: Vec<u32> = ct
                .split_once('(')
                .and_then(|(_, r)| r.split_once(')'))
                .map(|(a, _)| a.split(',').filter_map(|x| x.trim().parse().ok()).collect())
                .unwrap_or_default();
            let arg = |k: usize, default: u32| args.get(k).copied().unwrap_or(default);
            let small = |v: u32| u8::try_from(v).map_err(|_| bad(format!("`{ct}` out of range")));
            let charset = || c.charset.as_deref().map_or(Charset::Binary, Charset::from_name);
            let text = |json: bool, pad_to: Option<usize>| {
                let cs = charset();
                Kind::Str { prefix: 4, charset: cs, json, pad_to }
            };
            let kind = match c.data_type.to_ascii_lowercase().as_str() {
                "tinyint" => Kind::Int { bytes: 1, unsigned },
                "smallint" => Kind::Int { bytes: 2, unsigned },
                "mediumint" => Kind::Int { bytes: 3, unsigned },
                "int" | "integer" => Kind::Int { bytes: 4, unsigned },
                "bigint" => Kind::Int { bytes: 8, unsigned },
                "float" => Kind::Float,
                "double" | "real" | "double precision" => Kind::Double,
                "decimal" | "numeric" => {
                    let (precision, scale) = (small(arg(0, 10))?, small(arg(1, 0))?);
                    decimal::check_precision(precision, scale).map_err(bad)?;
                    Kind::Decimal { precision, scale }
                }
                "year" => Kind::Year,
                "date" => Kind::Date,
                "time" => Kind::Time2 { fsp: fsp(small(arg(0, 0))?).map_err(bad)? },
                "datetime" => Kind::DateTime2 { fsp: fsp(small(arg(0, 0))?).map_err(bad)? },
                "timestamp" => Kind::Timestamp2 { fsp: fsp(small(arg(0, 0))?).map_err(bad)? },
                "bit" => {
                    let bits = u16::try_from(arg(0, 1)).unwrap_or(0);
                    if bits == 0 || bits > 64 {
                        return Err(bad(format!("BIT({bits}) out of range")));
                    }
                    Kind::Bit { bits }
                }
                "enum" => {
                    let labels = parse_labels(&c.column_type, "enum")
                        .ok_or_else(|| bad("cannot parse ENUM labels".to_owned()))?;
                    Kind::Enum { pack: if labels.len() < 256 { 1 } else { 2 }, labels: labels.into() }
                }
                "set" => {
                    let labels =
                        parse_labels(&c.column_type, "set").ok_or_else(|| bad("cannot parse SET labels".to_owned()))?;
                    let pack = u8::try_from(labels.len().div_ceil(8).max(1)).unwrap_or(8);
                    Kind::Set { pack, labels: labels.into() }
                }
                "json" if flavor == Flavor::MySql => {
                    json_columns.push(i);
                    Kind::Json { prefix: 4 }
                }
                "binary" => text(false, Some(arg(0, 1) as usize)),
                "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "json" | "varbinary"
                | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                    let json = flavor == Flavor::MariaDb && c.is_json && charset().is_text();
                    text(json, None)
                }
                "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
                | "geometrycollection" | "geomcollection" | "vector" => Kind::Raw { prefix: 4 },
                other => return Err(bad(format!("unsupported column type `{other}`"))),
            };
            if let Kind::Str { charset: Charset::Unsupported, .. } = kind {
                undecodable.push(c.name.clone());
            }
            kinds.push(kind);
        }
        let mut key: Vec<usize> = catalog
            .primary_key
            .iter()
            .map(|k| {
                catalog.columns.iter().position(|c| c.name.eq_ignore_ascii_case(k)).ok_or_else(|| {
                    MysqlError::MissingMetadata {
                        table: qualified.clone(),
                        reason: format!("primary-key column `{k}` is not a column"),
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        let key_is_all_columns = key.is_empty();
        if key_is_all_columns {
            key = (0..kinds.len()).collect();
        }
        let columns = catalog
            .columns
            .iter()
            .zip(&kinds)
            .map(|(c, kind)| Column { name: c.name.clone(), ty: kind.column_type(), nullable: c.nullable })
            .collect();
        Ok(TableInfo {
            database: database.into(),
            table: table.into(),
            schema: TableSchema::new(columns, key),
            key_is_all_columns,
            undecodable_charset_columns: undecodable,
            kinds,
            json_columns,
        })
    }

    /// What information_schema data a table map needs (see [`CatalogNeed`]).
    pub fn catalog_need(tme: &TableMapEvent<'_>, flavor: Flavor) -> Result<CatalogNeed, MysqlError> {
        let meta = TableMeta::read(tme, flavor)?;
        let has = |pred: &dyn Fn(&MyType) -> bool| meta.types.iter().any(pred);
        if meta.names.is_none() {
            return Ok(CatalogNeed::Required("column names".into()));
        }
        if meta.signedness.is_none() && has(&|t| is_signedness_column(*t)) {
            return Ok(CatalogNeed::Required("integer signedness".into()));
        }
        if meta.charsets.is_none() && has(&|t| is_charset_column(*t, flavor)) {
            return Ok(CatalogNeed::Required("column charsets".into()));
        }
        if meta.enum_labels.is_none() && has(&|t| *t == MyType::MYSQL_TYPE_ENUM) {
            return Ok(CatalogNeed::Required("ENUM labels".into()));
        }
        if meta.set_labels.is_none() && has(&|t| *t == MyType::MYSQL_TYPE_SET) {
            return Ok(CatalogNeed::Required("SET labels".into()));
        }
        if flavor == Flavor::MariaDb && has(&|t| t.is_character_type()) {
            return Ok(CatalogNeed::Optional);
        }
        Ok(CatalogNeed::None)
    }
}

fn fsp(x: u8) -> Result<u8, String> {
    if x <= 6 { Ok(x) } else { Err(format!("fractional-second precision {x} out of range")) }
}

fn blob_prefix(x: u8) -> Result<u8, String> {
    if (1..=4).contains(&x) { Ok(x) } else { Err(format!("length-prefix size {x} out of range")) }
}

/// Whether an information_schema column can be the table-map column (guards
/// against a catalog that no longer matches the binlog).
fn catalog_type_matches(ty: MyType, c: &CatalogColumn) -> bool {
    let dt = c.data_type.to_ascii_lowercase();
    let dt = dt.as_str();
    match ty {
        // One family, like decimals and strings of any width: the table map
        // decides the width, information_schema may already show a later
        // one (`MODIFY m INT` executed before the reader reached the rows
        // written under `SMALLINT`).
        MyType::MYSQL_TYPE_TINY
        | MyType::MYSQL_TYPE_SHORT
        | MyType::MYSQL_TYPE_INT24
        | MyType::MYSQL_TYPE_LONG
        | MyType::MYSQL_TYPE_LONGLONG => {
            matches!(dt, "tinyint" | "bool" | "boolean" | "smallint" | "mediumint" | "int" | "integer" | "bigint")
        }
        MyType::MYSQL_TYPE_FLOAT => dt == "float",
        MyType::MYSQL_TYPE_DOUBLE => matches!(dt, "double" | "real" | "double precision"),
        MyType::MYSQL_TYPE_NEWDECIMAL | MyType::MYSQL_TYPE_DECIMAL => matches!(dt, "decimal" | "numeric"),
        MyType::MYSQL_TYPE_YEAR => dt == "year",
        MyType::MYSQL_TYPE_DATE | MyType::MYSQL_TYPE_NEWDATE => dt == "date",
        MyType::MYSQL_TYPE_TIME | MyType::MYSQL_TYPE_TIME2 => dt == "time",
        MyType::MYSQL_TYPE_DATETIME | MyType::MYSQL_TYPE_DATETIME2 => dt == "datetime",
        MyType::MYSQL_TYPE_TIMESTAMP | MyType::MYSQL_TYPE_TIMESTAMP2 => dt == "timestamp",
        MyType::MYSQL_TYPE_BIT => dt == "bit",
        MyType::MYSQL_TYPE_ENUM => dt == "enum",
        MyType::MYSQL_TYPE_SET => dt == "set",
        MyType::MYSQL_TYPE_JSON => dt == "json",
        MyType::MYSQL_TYPE_VARCHAR | MyType::MYSQL_TYPE_VAR_STRING | MyType::MYSQL_TYPE_STRING => {
            matches!(dt, "varchar" | "varbinary" | "char" | "binary" | "inet6" | "inet4" | "uuid")
        }
        MyType::MYSQL_TYPE_BLOB
        | MyType::MYSQL_TYPE_TINY_BLOB
        | MyType::MYSQL_TYPE_MEDIUM_BLOB
        | MyType::MYSQL_TYPE_LONG_BLOB => {
            dt.ends_with("blob") || dt.ends_with("text") || dt == "json" || dt == "long" || dt == "long varchar"
        }
        MyType::MYSQL_TYPE_GEOMETRY => true,
        _ => true,
    }
}

/// Parses the labels of `enum('a','b''c')` / `set(...)` as information_schema
/// prints them.
pub(crate) fn parse_labels(column_type: &str, keyword: &str) -> Option<Vec<String>> {
    let t = column_type.trim();
    let open = t.find('(')?;
    if !t[..open].trim().eq_ignore_ascii_case(keyword) {
        return None;
    }
    let body = t[open + 1..].strip_suffix(')')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next()? != '\'' {
            return None;
        }
        let mut label = String::new();
        loop {
            match chars.next()? {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    label.push('\'');
                }
                '\'' => break,
                '\\' => label.push(chars.next()?),
                c => label.push(c),
            }
        }
        labels.push(label);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(labels),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// Upper bound on columns (MySQL allows 4096).
const MAX_COLUMNS: u64 = 4096;

/// Whether a column (by real type) is a "character column" for the
/// DEFAULT_CHARSET / COLUMN_CHARSET metadata. MySQL 9 counts VECTOR, MariaDB
/// counts GEOMETRY (both derive from BLOB in the server); ENUM/SET and JSON
/// never count.
fn is_charset_column(ty: MyType, flavor: Flavor) -> bool {
    ty.is_character_type()
        || match flavor {
            Flavor::MySql => ty == MyType::MYSQL_TYPE_VECTOR,
            Flavor::MariaDb => ty == MyType::MYSQL_TYPE_GEOMETRY,
        }
}

/// Whether a column consumes a SIGNEDNESS bit (YEAR does: checked against
/// MariaDB 10.11, and `mysql_common` agrees for MySQL).
fn is_signedness_column(ty: MyType) -> bool {
    ty.is_numeric_type()
}

// Optional metadata field types (libbinlogevents rows_event.h).
const OM_SIGNEDNESS: u8 = 1;
const OM_DEFAULT_CHARSET: u8 = 2;
const OM_COLUMN_CHARSET: u8 = 3;
const OM_COLUMN_NAME: u8 = 4;
const OM_SET_STR_VALUE: u8 = 5;
const OM_ENUM_STR_VALUE: u8 = 6;
const OM_SIMPLE_PRIMARY_KEY: u8 = 8;
const OM_PRIMARY_KEY_WITH_PREFIX: u8 = 9;
const OM_ENUM_AND_SET_DEFAULT_CHARSET: u8 = 10;
const OM_ENUM_AND_SET_COLUMN_CHARSET: u8 = 11;

/// The optional metadata block of a table map (its raw TLV bytes).
fn optional_metadata_bytes(tme: &TableMapEvent<'_>) -> ReadResult<Vec<u8>> {
    let mut raw = Vec::new();
    tme.serialize(&mut raw);
    let mut r = Reader::new(&raw);
    r.take(8)?; // table id, flags
    let db_len = usize::from(r.u8()?);
    r.take(db_len + 1)?;
    let table_len = usize::from(r.u8()?);
    r.take(table_len + 1)?;
    let n = usize::try_from(r.lenenc()?).map_err(|_| "column count overflow".to_owned())?;
    r.take(n)?;
    let meta_len = usize::try_from(r.lenenc()?).map_err(|_| "metadata length overflow".to_owned())?;
    r.take(meta_len)?;
    r.take(n.div_ceil(8))?;
    Ok(r.rest().to_vec())
}

fn lenenc_usize(r: &mut Reader<'_>) -> ReadResult<usize> {
    usize::try_from(r.lenenc()?).map_err(|_| "length overflow".to_owned())
}

/// Per-column string lists (ENUM_STR_VALUE / SET_STR_VALUE).
fn read_str_lists(v: &[u8]) -> ReadResult<Vec<Vec<Vec<u8>>>> {
    let mut r = Reader::new(v);
    let mut out = Vec::new();
    while !r.is_empty() {
        let count = lenenc_usize(&mut r)?;
        let mut labels = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let len = lenenc_usize(&mut r)?;
            labels.push(r.take(len)?.to_vec());
        }
        out.push(labels);
    }
    Ok(out)
}

/// DEFAULT_CHARSET-style field: default collation, then (index, collation) pairs.
fn read_default_charset(v: &[u8], count: usize) -> ReadResult<Vec<u16>> {
    let mut r = Reader::new(v);
    let default = r.lenenc()? as u16;
    let mut out = vec![default; count];
    while !r.is_empty() {
        let i = lenenc_usize(&mut r)?;
        let cs = r.lenenc()? as u16;
        *out.get_mut(i).ok_or_else(|| "charset index out of range".to_owned())? = cs;
    }
    Ok(out)
}

fn read_column_charsets(v: &[u8]) -> ReadResult<Vec<u16>> {
    let mut r = Reader::new(v);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(r.lenenc()? as u16);
    }
    Ok(out)
}

/// The parts of a table map this crate uses, read once.
struct TableMeta {
    database: String,
    table: String,
    types: Vec<MyType>,
    metas: Vec<Vec<u8>>,
    nullable: Vec<bool>,
    names: Option<Vec<String>>,
    /// One flag per signedness column (`true` = unsigned).
    signedness: Option<Vec<bool>>,
    /// One collation id per charset column.
    charsets: Option<Vec<u16>>,
    enum_labels: Option<Vec<Vec<String>>>,
    set_labels: Option<Vec<Vec<String>>>,
    primary_key: Option<Vec<usize>>,
}

impl TableMeta {
    fn read(tme: &TableMapEvent<'_>, flavor: Flavor) -> Result<TableMeta, MysqlError> {
        let database = tme.database_name().into_owned();
        let table = tme.table_name().into_owned();
        let qualified = format!("{database}.{table}");
        let bad = |column: &str, reason: String| MysqlError::decode(&qualified, column, reason);
        let n = tme.columns_count();
        if n > MAX_COLUMNS {
            return Err(bad("TABLE_MAP", format!("{n} columns")));
        }
        let n = n as usize;
        let mut types = Vec::with_capacity(n);
        let mut metas = Vec::with_capacity(n);
        for i in 0..n {
            let col = format!("#{}", i + 1);
            let ty = match tme.get_column_type(i) {
                Ok(Some(t)) => t,
                Ok(None) => return Err(bad(&col, "no column type".into())),
                Err(e) => return Err(bad(&col, e.to_string())),
            };
            let m = tme.get_column_metadata(i).ok_or_else(|| bad(&col, "no column metadata".into()))?;
            types.push(ty);
            metas.push(m.to_vec());
        }
        let mask = tme.null_bitmask();
        let nullable = (0..n).map(|i| mask.get(i).is_some_and(|b| *b)).collect();

        let charset_count = types.iter().filter(|t| is_charset_column(**t, flavor)).count();
        let enum_set_count = types.iter().filter(|t| t.is_enum_or_set_type()).count();
        let om_err = |reason: String| bad("TABLE_MAP optional metadata", reason);
        let block = optional_metadata_bytes(tme).map_err(om_err)?;
        let mut r = Reader::new(&block);
        let mut names = None;
        let mut signedness: Option<Vec<bool>> = None;
        let mut charsets = None;
        let mut enum_raw = None;
        let mut set_raw = None;
        let mut enum_set_charsets: Option<Vec<u16>> = None;
        let mut simple_pk: Option<Vec<usize>> = None;
        let mut prefix_pk: Option<Vec<usize>> = None;
        while !r.is_empty() {
            let ty = r.u8().map_err(om_err)?;
            let len = lenenc_usize(&mut r).map_err(om_err)?;
            let v = r.take(len).map_err(om_err)?;
            match ty {
                OM_SIGNEDNESS => {
                    signedness = Some(v.iter().flat_map(|b| (0..8).map(move |k| b & (0x80 >> k) != 0)).collect());
                }
                OM_DEFAULT_CHARSET => charsets = Some(read_default_charset(v, charset_count).map_err(om_err)?),
                OM_COLUMN_CHARSET => charsets = Some(read_column_charsets(v).map_err(om_err)?),
                OM_COLUMN_NAME => {
                    let mut cr = Reader::new(v);
                    let mut list = Vec::with_capacity(n);
                    while !cr.is_empty() {
                        let len = lenenc_usize(&mut cr).map_err(om_err)?;
                        let name = cr.take(len).map_err(om_err)?;
                        list.push(String::from_utf8_lossy(name).into_owned());
                    }
                    names = Some(list);
                }
                OM_SET_STR_VALUE => set_raw = Some(read_str_lists(v).map_err(om_err)?),
                OM_ENUM_STR_VALUE => enum_raw = Some(read_str_lists(v).map_err(om_err)?),
                OM_SIMPLE_PRIMARY_KEY => {
                    let mut pr = Reader::new(v);
                    let mut pk = Vec::new();
                    while !pr.is_empty() {
                        pk.push(lenenc_usize(&mut pr).map_err(om_err)?);
                    }
                    simple_pk = Some(pk);
                }
                OM_PRIMARY_KEY_WITH_PREFIX => {
                    let mut pr = Reader::new(v);
                    let mut pk = Vec::new();
                    while !pr.is_empty() {
                        pk.push(lenenc_usize(&mut pr).map_err(om_err)?);
                        pr.lenenc().map_err(om_err)?; // prefix length
                    }
                    prefix_pk = Some(pk);
                }
                OM_ENUM_AND_SET_DEFAULT_CHARSET => {
                    enum_set_charsets = Some(read_default_charset(v, enum_set_count).map_err(om_err)?);
                }
                OM_ENUM_AND_SET_COLUMN_CHARSET => enum_set_charsets = Some(read_column_charsets(v).map_err(om_err)?),
                // GEOMETRY_TYPE, COLUMN_VISIBILITY, VECTOR_DIMENSIONALITY and future fields.
                _ => {}
            }
        }
        if let Some(names) = &names
            && names.len() != n
        {
            return Err(bad("TABLE_MAP", format!("{} column names for {n} columns", names.len())));
        }
        if charsets.as_ref().is_some_and(|c| c.len() < charset_count) {
            return Err(bad("TABLE_MAP", "fewer charsets than character columns".into()));
        }
        let numeric_count = types.iter().filter(|t| is_signedness_column(**t)).count();
        if signedness.as_ref().is_some_and(|s| s.len() < numeric_count) {
            return Err(bad("TABLE_MAP", "fewer signedness flags than numeric columns".into()));
        }
        // ENUM and SET labels are in the column's charset.
        let mut es_i = 0usize;
        let mut enum_i = 0usize;
        let mut set_i = 0usize;
        let mut enum_labels = enum_raw.as_ref().map(|_| Vec::new());
        let mut set_labels = set_raw.as_ref().map(|_| Vec::new());
        for ty in &types {
            if !ty.is_enum_or_set_type() {
                continue;
            }
            let cs = enum_set_charsets
                .as_ref()
                .and_then(|c| c.get(es_i))
                .map_or(Charset::Utf8, |id| Charset::from_collation_id(*id));
            es_i += 1;
            let decode = |raw: &Vec<Vec<u8>>| -> Vec<String> {
                raw.iter()
                    .map(|l| {
                        if cs.is_text() {
                            cs.decode(l).unwrap_or_else(|_| String::from_utf8_lossy(l).into_owned())
                        } else {
                            String::from_utf8_lossy(l).into_owned()
                        }
                    })
                    .collect()
            };
            if *ty == MyType::MYSQL_TYPE_ENUM {
                if let (Some(raw), Some(out)) = (enum_raw.as_ref().and_then(|e| e.get(enum_i)), enum_labels.as_mut()) {
                    out.push(decode(raw));
                }
                enum_i += 1;
            } else {
                if let (Some(raw), Some(out)) = (set_raw.as_ref().and_then(|s| s.get(set_i)), set_labels.as_mut()) {
                    out.push(decode(raw));
                }
                set_i += 1;
            }
        }
        Ok(TableMeta {
            database,
            table,
            types,
            metas,
            nullable,
            names,
            signedness,
            charsets,
            enum_labels,
            set_labels,
            primary_key: simple_pk.or(prefix_pk),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        assert_eq!(parse_labels("enum('a','b''c','d,e')", "enum").unwrap(), vec!["a", "b'c", "d,e"]);
        assert_eq!(parse_labels("set('x', 'y')", "set").unwrap(), vec!["x", "y"]);
        assert_eq!(parse_labels("enum('')", "enum").unwrap(), vec![""]);
        assert!(parse_labels("enum('a'", "enum").is_none());
        assert!(parse_labels("int(11)", "enum").is_none());
    }

    #[test]
    fn integer_widths_are_one_family_other_types_are_not() {
        let col = |dt: &str| CatalogColumn {
            name: "m".into(),
            data_type: dt.into(),
            column_type: dt.into(),
            charset: None,
            is_json: false,
            nullable: true,
        };
        // Widened since the event: decoded by the table map's width.
        assert!(catalog_type_matches(MyType::MYSQL_TYPE_SHORT, &col("int")));
        assert!(catalog_type_matches(MyType::MYSQL_TYPE_LONG, &col("bigint")));
        assert!(catalog_type_matches(MyType::MYSQL_TYPE_TINY, &col("tinyint")));
        // A different family is a table altered beyond what the map can decode.
        assert!(!catalog_type_matches(MyType::MYSQL_TYPE_SHORT, &col("varchar")));
        assert!(!catalog_type_matches(MyType::MYSQL_TYPE_VARCHAR, &col("int")));
    }

    #[test]
    fn flavor_from_version() {
        assert_eq!(Flavor::from_server_version("10.11.6-MariaDB-0+deb12u1-log"), Flavor::MariaDb);
        assert_eq!(Flavor::from_server_version("8.0.36"), Flavor::MySql);
    }
}
