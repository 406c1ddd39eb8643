//! Checks a mariadb-dump / mysqldump SQL stream as it passes: that it ends with the tool's
//! `-- Dump completed` line and its newline (written last, so a cut stream lacks it), and how many rows
//! each table's INSERT statements hold. A byte-at-a-time scanner that knows SQL's strings, quoted names
//! and comments well enough to tell a tuple's parenthesis from one inside a string; it keeps nothing but
//! the comment line and the name it is reading, so memory stays small whatever the size of the dump.

use std::collections::BTreeMap;

/// Comment lines are read up to this length (the ones parsed are short); the rest is passed over.
const MAX_COMMENT: usize = 64 << 10;
/// Words and quoted names are kept up to this length (MySQL's names are at most 64 characters).
const MAX_NAME: usize = 256;

/// What a complete dump says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SqlDumpSummary {
    /// From the "-- Server version\t10.11.x-MariaDB-..." header comment.
    pub server_version: Option<String>,
    /// The binlog/GTID position comments that `--master-data=2` / `--gtid` write ("CHANGE MASTER TO …",
    /// "SET GLOBAL gtid_slave_pos=…"), verbatim without the "-- ", one a line.
    pub position: Option<String>,
    /// Rows per table ("db.table"): the tuples of its INSERT statements. Tables whose data section is
    /// there but empty are listed with 0.
    pub tables: BTreeMap<String, u64>,
}

/// The lexical state: where in SQL's syntax the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    Code,
    /// After `-`: a second one may begin a comment.
    Dash,
    /// After `--`: a comment if whitespace follows.
    DashDash,
    /// After `/`: `*` begins a comment.
    Slash,
    /// After `/*`: `!` (or `M!`) makes it a conditional comment, whose content is SQL.
    SlashStar,
    SlashStarM,
    /// The version number after `/*!`.
    Version,
    /// After `*` inside a conditional comment: `/` ends it.
    Star,
    Quoted {
        quote: u8,
        escaped: bool,
    },
    /// After a closing quote: the same quote again is an escaped one.
    QuoteEnd {
        quote: u8,
    },
    Name,
    /// After a closing backtick: another is an escaped one.
    NameEnd,
    LineComment,
    BlockComment {
        star: bool,
    },
    /// The rest of a `DELIMITER` line.
    Delimiter,
}

/// The statement being read, as far as counting needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Statement {
    Start,
    Use(Option<String>),
    Insert(Insert),
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Insert {
    /// The table's name, and its database when qualified.
    name: Vec<String>,
    /// The next word or quoted name is (part of) the table's name.
    naming: bool,
    /// After VALUES: each parenthesis at depth 0 opens a row.
    values: bool,
    /// The row list ended (a word followed it, as in ON DUPLICATE KEY UPDATE).
    ended: bool,
    depth: u32,
    rows: u64,
}

/// Feed it the dump's bytes in order, then [`finish`](Self::finish).
pub struct SqlDumpCheck {
    offset: u64,
    lex: Lex,
    /// The next byte begins a line, outside any string or comment.
    line_start: bool,
    /// The `-` that began the current `--` was at a line's start.
    dash_at_start: bool,
    /// Inside `/*! … */`.
    conditional: bool,
    word: Vec<u8>,
    name: Vec<u8>,
    /// The comment line being read, when it began a line.
    comment: Option<Vec<u8>>,
    delimiter: Vec<u8>,
    delimiter_matched: usize,
    /// The argument of the `DELIMITER` line being read.
    new_delimiter: Vec<u8>,
    statement: Statement,
    header_database: Option<String>,
    database: Option<String>,
    server_version: Option<String>,
    position: Vec<String>,
    tables: BTreeMap<String, u64>,
    /// The last non-blank line read was the completion line.
    completed: bool,
}

impl Default for SqlDumpCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl SqlDumpCheck {
    pub fn new() -> Self {
        SqlDumpCheck {
            offset: 0,
            lex: Lex::Code,
            line_start: true,
            dash_at_start: false,
            conditional: false,
            word: Vec::new(),
            name: Vec::new(),
            comment: None,
            delimiter: b";".to_vec(),
            delimiter_matched: 0,
            new_delimiter: Vec::new(),
            statement: Statement::Start,
            header_database: None,
            database: None,
            server_version: None,
            position: Vec::new(),
            tables: BTreeMap::new(),
            completed: false,
        }
    }

    /// Feeds the next bytes of the dump, in order, in pieces of any size.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() {
            // Most of a dump is string content: pass over it up to the next quote or backslash.
            if let Lex::Quoted { quote, escaped: false } = self.lex {
                let rest = &bytes[i..];
                let n = memchr::memchr2(quote, b'\\', rest).unwrap_or(rest.len());
                if n > 0 {
                    i += n;
                    self.offset += n as u64;
                    continue;
                }
            }
            // And over hex blobs and numbers: what `code` does for each byte of a word, at once.
            if self.lex == Lex::Code {
                let rest = &bytes[i..];
                let n = rest.iter().position(|&b| !WORD_BYTES[b as usize]).unwrap_or(rest.len());
                if n > 0 {
                    let room = (MAX_NAME - self.word.len()).min(n);
                    self.word.extend_from_slice(&rest[..room]);
                    (self.completed, self.line_start) = (false, false);
                    i += n;
                    self.offset += n as u64;
                    continue;
                }
            }
            self.byte(bytes[i]);
            i += 1;
            self.offset += 1;
        }
    }

    fn byte(&mut self, b: u8) {
        if !b.is_ascii_whitespace() {
            self.completed = false;
        }
        // A state that looked ahead hands the byte on to the state it falls back to.
        loop {
            match self.lex {
                Lex::Code => self.code(b),
                Lex::Dash if b == b'-' => self.lex = Lex::DashDash,
                Lex::Slash if b == b'*' => self.lex = Lex::SlashStar,
                Lex::DashDash if b <= b' ' => {
                    self.lex = Lex::LineComment;
                    self.comment = self.dash_at_start.then(|| b"--".to_vec());
                    continue;
                }
                Lex::Dash | Lex::DashDash | Lex::Slash | Lex::Star => {
                    let star = self.lex == Lex::Star;
                    self.lex = Lex::Code;
                    match b {
                        b'/' if star => self.conditional = false,
                        _ => continue,
                    }
                }
                Lex::SlashStar => match b {
                    b'!' => self.open_conditional(),
                    b'M' => self.lex = Lex::SlashStarM,
                    _ => {
                        self.lex = Lex::BlockComment { star: false };
                        continue;
                    }
                },
                Lex::SlashStarM => match b {
                    b'!' => self.open_conditional(),
                    _ => {
                        self.lex = Lex::BlockComment { star: false };
                        continue;
                    }
                },
                Lex::Version if b.is_ascii_digit() => {}
                Lex::Version => {
                    self.lex = Lex::Code;
                    continue;
                }
                Lex::Quoted { quote, escaped } => {
                    self.lex = match (escaped, b) {
                        (true, _) => Lex::Quoted { quote, escaped: false },
                        (false, b'\\') => Lex::Quoted { quote, escaped: true },
                        (false, _) if b == quote => Lex::QuoteEnd { quote },
                        _ => Lex::Quoted { quote, escaped: false },
                    }
                }
                Lex::QuoteEnd { quote } if b == quote => self.lex = Lex::Quoted { quote, escaped: false },
                Lex::QuoteEnd { .. } => {
                    self.lex = Lex::Code;
                    self.token(Token::String);
                    continue;
                }
                Lex::Name if b == b'`' => self.lex = Lex::NameEnd,
                Lex::Name => push_capped(&mut self.name, b, MAX_NAME),
                Lex::NameEnd if b == b'`' => {
                    push_capped(&mut self.name, b, MAX_NAME);
                    self.lex = Lex::Name;
                }
                Lex::NameEnd => {
                    self.lex = Lex::Code;
                    let name = String::from_utf8_lossy(&std::mem::take(&mut self.name)).into_owned();
                    self.token(Token::Name(name));
                    continue;
                }
                Lex::LineComment if b == b'\n' => {
                    self.end_comment();
                    self.lex = Lex::Code;
                    self.line_start = true;
                }
                Lex::LineComment => {
                    if let Some(comment) = &mut self.comment {
                        push_capped(comment, b, MAX_COMMENT);
                    }
                }
                Lex::BlockComment { star } => {
                    self.lex = match b {
                        b'/' if star => Lex::Code,
                        b'*' => Lex::BlockComment { star: true },
                        _ => Lex::BlockComment { star: false },
                    }
                }
                Lex::Delimiter if b == b'\n' => {
                    let delimiter = std::mem::take(&mut self.new_delimiter).trim_ascii().to_vec();
                    if !delimiter.is_empty() {
                        self.delimiter = delimiter;
                    }
                    self.statement = Statement::Start;
                    self.lex = Lex::Code;
                    self.line_start = true;
                }
                Lex::Delimiter => push_capped(&mut self.new_delimiter, b, 16),
            }
            return;
        }
    }

    fn open_conditional(&mut self) {
        self.conditional = true;
        self.lex = Lex::Version;
    }

    /// A byte of SQL outside strings, names and comments.
    fn code(&mut self, b: u8) {
        let at_start = std::mem::replace(&mut self.line_start, b == b'\n');
        if is_word_byte(b) {
            push_capped(&mut self.word, b, MAX_NAME);
            return;
        }
        if !self.word.is_empty() {
            let word = std::mem::take(&mut self.word);
            self.token(Token::Word(&word));
            if self.lex != Lex::Code {
                // DELIMITER took the rest of the line.
                self.byte(b);
                return;
            }
        }
        if b == self.delimiter[self.delimiter_matched] {
            self.delimiter_matched += 1;
            if self.delimiter_matched == self.delimiter.len() {
                self.delimiter_matched = 0;
                self.end_statement();
            }
            return;
        }
        self.delimiter_matched = usize::from(b == self.delimiter[0]);
        match b {
            b'\'' | b'"' => self.lex = Lex::Quoted { quote: b, escaped: false },
            b'`' => self.lex = Lex::Name,
            b'-' => {
                self.dash_at_start = at_start;
                self.lex = Lex::Dash;
            }
            b'/' => self.lex = Lex::Slash,
            b'*' if self.conditional => self.lex = Lex::Star,
            b'#' => {
                self.comment = None;
                self.lex = Lex::LineComment;
            }
            b'(' => self.token(Token::Open),
            b')' => self.token(Token::Close),
            b'.' => self.token(Token::Dot),
            _ if b.is_ascii_whitespace() => {}
            _ => self.token(Token::Other),
        }
    }

    fn token(&mut self, token: Token) {
        if self.statement == Statement::Start {
            self.statement = match token {
                Token::Word(w) if w.eq_ignore_ascii_case(b"INSERT") || w.eq_ignore_ascii_case(b"REPLACE") => Statement::Insert(Insert::default()),
                Token::Word(w) if w.eq_ignore_ascii_case(b"USE") => Statement::Use(None),
                // A client command: its argument is the rest of the line.
                Token::Word(w) if w.eq_ignore_ascii_case(b"DELIMITER") => {
                    self.lex = Lex::Delimiter;
                    Statement::Other
                }
                _ => Statement::Other,
            };
            return;
        }
        match &mut self.statement {
            Statement::Use(name @ None) => {
                *name = match token {
                    Token::Name(n) => Some(n),
                    Token::Word(w) => Some(String::from_utf8_lossy(w).into_owned()),
                    _ => None,
                }
            }
            Statement::Insert(insert) if insert.values => match token {
                Token::Open if !insert.ended => {
                    if insert.depth == 0 {
                        insert.rows += 1;
                    }
                    insert.depth += 1;
                }
                Token::Close => insert.depth = insert.depth.saturating_sub(1),
                Token::Word(_) if insert.depth == 0 => insert.ended = true,
                _ => {}
            },
            Statement::Insert(insert) => match token {
                Token::Word(w) if insert.depth == 0 && w.eq_ignore_ascii_case(b"INTO") => insert.naming = true,
                Token::Word(w) if insert.depth == 0 && (w.eq_ignore_ascii_case(b"VALUES") || w.eq_ignore_ascii_case(b"VALUE")) => insert.values = true,
                Token::Word(w) if insert.naming => {
                    insert.name.push(String::from_utf8_lossy(w).into_owned());
                    insert.naming = false;
                }
                Token::Name(n) if insert.naming => {
                    insert.name.push(n);
                    insert.naming = false;
                }
                // `db`.`table`
                Token::Dot if insert.depth == 0 && !insert.name.is_empty() => insert.naming = true,
                Token::Open => insert.depth += 1,
                Token::Close => insert.depth = insert.depth.saturating_sub(1),
                _ => {}
            },
            _ => {}
        }
    }

    fn end_statement(&mut self) {
        match std::mem::replace(&mut self.statement, Statement::Start) {
            Statement::Use(Some(database)) => self.database = Some(database),
            Statement::Insert(insert) if insert.values && !insert.name.is_empty() => {
                let key = self.table_key(insert.name);
                *self.tables.entry(key).or_default() += insert.rows;
            }
            _ => {}
        }
    }

    fn table_key(&self, mut name: Vec<String>) -> String {
        let table = name.pop().unwrap_or_default();
        match name.pop().or_else(|| self.database.clone()).or_else(|| self.header_database.clone()) {
            Some(database) => format!("{database}.{table}"),
            None => table,
        }
    }

    /// A comment line that began a line has ended, with its newline: the header, position and
    /// completion lines are read. (A completion line cut before its newline never gets here.)
    fn end_comment(&mut self) {
        let Some(line) = self.comment.take() else { return };
        let line = String::from_utf8_lossy(&line);
        let text = line.trim_end();
        if let Some(version) = text.strip_prefix("-- Server version") {
            self.server_version.get_or_insert_with(|| version.trim().to_string());
        } else if let Some(host) = text.strip_prefix("-- Host: ") {
            if let Some((_, database)) = host.split_once("Database: ") {
                self.header_database = Some(database.trim().to_string()).filter(|d| !d.is_empty());
            }
        } else if let Some(table) = text.strip_prefix("-- Dumping data for table ") {
            let table = unquote(table);
            let key = self.table_key(vec![table]);
            self.tables.entry(key).or_default();
        } else if ["-- CHANGE MASTER TO ", "-- CHANGE REPLICATION SOURCE TO ", "-- SET GLOBAL gtid_slave_pos", "-- SET @@GLOBAL.GTID_PURGED"]
            .iter()
            .any(|p| text.starts_with(p))
        {
            self.position.push(text[3..].to_string());
        } else if text == "-- Dump completed" || text.starts_with("-- Dump completed on ") {
            self.completed = true;
        }
    }

    /// At the end of the stream: the summary if the dump is complete, else why not.
    pub fn finish(self) -> Result<SqlDumpSummary, String> {
        if !self.completed {
            let at = self.offset;
            let inside = match &self.statement {
                Statement::Insert(insert) if !insert.name.is_empty() => format!(" inside an INSERT into {}", self.table_key(insert.name.clone())),
                _ => String::new(),
            };
            return Err(match at {
                0 => "the dump is empty: it was cut short".to_string(),
                _ => format!("the dump does not end with mariadb-dump's \"-- Dump completed\" line: it was cut short after {at} bytes{inside}"),
            });
        }
        let position = (!self.position.is_empty()).then(|| self.position.join("\n"));
        Ok(SqlDumpSummary { server_version: self.server_version, position, tables: self.tables })
    }
}

enum Token<'a> {
    Word(&'a [u8]),
    Name(String),
    String,
    Open,
    Close,
    Dot,
    Other,
}

/// Keywords, unquoted names, numbers and hex literals. (`$`, which names may hold, is left out: it is
/// a common DELIMITER.)
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// `is_word_byte` as a table: hex blobs are most of a dump's bytes, scanned one lookup each.
static WORD_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = byte.is_ascii_alphanumeric() || byte == b'_' || byte >= 0x80;
        b += 1;
    }
    table
};

fn push_capped(buffer: &mut Vec<u8>, b: u8, cap: usize) {
    if buffer.len() < cap {
        buffer.push(b);
    }
}

/// A name as the comments write it: `` `a``b` `` is a`b.
fn unquote(text: &str) -> String {
    match text.strip_prefix('`').and_then(|t| t.strip_suffix('`')) {
        Some(inner) => inner.replace("``", "`"),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dumps/", $name)).as_slice()
        };
    }

    /// `--single-transaction --routines --events --triggers --hex-blob --master-data=2 --gtid --databases shop`,
    /// as stackvault runs it.
    const SHOP: &[u8] = fixture!("mariadb-shop.sql");
    /// Two databases, binary data written raw (no --hex-blob).
    const TWO_RAW: &[u8] = fixture!("mariadb-two-raw.sql");
    /// One INSERT IGNORE per row with column lists, no USE line, no dump date.
    const ROWWISE: &[u8] = fixture!("mariadb-rowwise.sql");
    /// `--net-buffer-length=4096 --replace --hex-blob other`: the rows split over many statements.
    const SPLIT: &[u8] = fixture!("mariadb-split.sql");
    /// `--system=users --insert-ignore`.
    const USERS: &[u8] = fixture!("mariadb-users.sql");
    /// `--compact`: no comments, so no completion line.
    const COMPACT: &[u8] = fixture!("mariadb-compact.sql");

    const VERSION: &str = "10.11.18-MariaDB-0+deb12u1-log";

    fn check(pieces: &mut dyn Iterator<Item = &[u8]>) -> Result<SqlDumpSummary, String> {
        let mut check = SqlDumpCheck::new();
        pieces.for_each(|p| check.feed(p));
        check.finish()
    }

    fn whole(dump: &[u8]) -> Result<SqlDumpSummary, String> {
        check(&mut std::iter::once(dump))
    }

    fn tables(list: &[(&str, u64)]) -> BTreeMap<String, u64> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn shop_tables() -> Vec<(&'static str, u64)> {
        vec![("shop.calls", 409), ("shop.empty", 0), ("shop.log", 0), ("shop.we`ird.t", 6)]
    }

    #[test]
    fn complete_dumps_give_exact_row_counts() {
        let shop = whole(SHOP).unwrap();
        assert_eq!(shop.server_version.as_deref(), Some(VERSION));
        assert_eq!(
            shop.position.as_deref(),
            Some("CHANGE MASTER TO MASTER_USE_GTID=slave_pos;\nCHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000001', MASTER_LOG_POS=117581;\nSET GLOBAL gtid_slave_pos='0-1-40';")
        );
        assert_eq!(shop.tables, tables(&shop_tables()));

        let mut both = shop_tables();
        both.extend([("other.bin", 6), ("other.many", 1200)]);
        let two = whole(TWO_RAW).unwrap();
        assert_eq!((two.server_version.as_deref(), two.position.as_deref()), (Some(VERSION), None));
        assert_eq!(two.tables, tables(&both));

        assert_eq!(whole(ROWWISE).unwrap().tables, tables(&shop_tables()));
        assert_eq!(whole(SPLIT).unwrap().tables, tables(&[("other.bin", 6), ("other.many", 1200)]));
        assert_eq!(whole(USERS), Ok(SqlDumpSummary { server_version: Some(VERSION.into()), position: None, tables: BTreeMap::new() }));
    }

    #[test]
    fn piece_sizes_do_not_change_the_result() {
        for dump in [SHOP, TWO_RAW, SPLIT] {
            let expected = whole(dump);
            for size in [1, 2, 3, 7, 100, 4096] {
                assert_eq!(check(&mut dump.chunks(size)), expected, "pieces of {size}");
            }
        }
    }

    #[test]
    fn every_cut_fails() {
        for cut in 0..USERS.len() {
            assert!(whole(&USERS[..cut]).is_err(), "cut at {cut}");
        }
        for dump in [SHOP, TWO_RAW, ROWWISE, SPLIT] {
            for cut in (0..dump.len()).step_by(53).chain(dump.len() - 300..dump.len()) {
                let result = whole(&dump[..cut]);
                assert!(result.as_ref().is_err_and(|e| e.contains("it was cut short")), "cut at {cut}: {result:?}");
            }
        }
    }

    #[test]
    fn messages_say_where_the_dump_ends() {
        assert_eq!(whole(b""), Err("the dump is empty: it was cut short".into()));
        let at = SHOP.windows(12).position(|w| w == b"(300,'user29").unwrap();
        assert_eq!(
            whole(&SHOP[..at]),
            Err(format!(
                "the dump does not end with mariadb-dump's \"-- Dump completed\" line: it was cut short after {at} bytes inside an INSERT into shop.calls"
            ))
        );
        assert!(whole(COMPACT).unwrap_err().starts_with("the dump does not end with mariadb-dump's \"-- Dump completed\" line"));
    }

    const TRAILER: &str = "\n-- Dump completed on 2024-05-06  7:08:09\n";

    fn rows(sql: &str) -> Result<BTreeMap<String, u64>, String> {
        whole(format!("{sql}{TRAILER}").as_bytes()).map(|s| s.tables)
    }

    #[test]
    fn strings_names_and_comments_do_not_confuse_the_count() {
        let sql = r#"USE `d`;
INSERT INTO `t` VALUES (1,'a,b),(c'),(2,'it\'s'),(3,'it''s (x)'),(4,'back\\'),(5,"dq \" ),( "),(6,'\0\n\r\Z\\\''),
(7,_binary 'x)(',0x28292C),(8,NULL,-1.5e-3,-0),(9,'-- no comment'),(10,'/* no */ # no'),(11,'; no');
INSERT INTO `t``q` (`a`, `b,(`) VALUES (1,2);
-- it's a comment with a quote ( and a paren
/* a 'comment' with ; and ( */
# another ' comment
INSERT IGNORE INTO `x`.`y` VALUES (1),(2) ON DUPLICATE KEY UPDATE a=VALUES(a);
INSERT INTO plain(a) VALUES (1),
(2),
(3);
REPLACE INTO `r` VALUE (1);
INSERT INTO `s` SELECT * FROM `t`;
"#;
        let expected = tables(&[("d.plain", 3), ("d.r", 1), ("d.t", 11), ("d.t`q", 1), ("x.y", 2)]);
        assert_eq!(rows(sql), Ok(expected.clone()));
        let dump = format!("{sql}{TRAILER}");
        assert_eq!(check(&mut dump.as_bytes().chunks(1)).map(|s| s.tables), Ok(expected));
    }

    #[test]
    fn routine_and_trigger_bodies_are_not_data() {
        let sql = "USE `d`;\nDELIMITER ;;\nCREATE PROCEDURE p() BEGIN INSERT INTO t VALUES (1); INSERT INTO t VALUES (2),(3); END ;;\nDELIMITER $$\n\
CREATE FUNCTION f() RETURNS INT BEGIN INSERT INTO t VALUES (4); RETURN 1; END $$\nDELIMITER ;;\n\
/*!50003 TRIGGER tr AFTER INSERT ON t FOR EACH ROW INSERT INTO log VALUES ('a;b'), ('*/') */;;\nDELIMITER ;\nINSERT INTO `t` VALUES (1);\n";
        assert_eq!(rows(sql), Ok(tables(&[("d.t", 1)])));
    }

    #[test]
    fn empty_tables_are_listed_from_their_data_comment() {
        let sql = "-- Host: localhost    Database: d\n--\n-- Dumping data for table `e``x`\n--\n\nLOCK TABLES `e``x` WRITE;\nUNLOCK TABLES;\n";
        assert_eq!(rows(sql), Ok(tables(&[("d.e`x", 0)])));
    }

    #[test]
    fn only_a_whole_completion_line_at_the_end_counts() {
        let ok = |text: &str| whole(text.as_bytes()).is_ok();
        assert!(ok("SELECT 1;\n-- Dump completed on 2024-05-06 07:08:09\n"));
        assert!(ok("SELECT 1;\n-- Dump completed\n\n  \n"));
        assert!(!ok("SELECT 1;\n-- Dump completed on 2024-05-06 07:08:09"));
        assert!(!ok("SELECT 1;\n-- Dump completed\nSELECT 2;\n"));
        assert!(!ok("SELECT 1;\n-- Dump completed\n-- more\n"));
        assert!(!ok("SELECT '\n-- Dump completed\n"));
        assert!(!ok("SELECT 1; -- Dump completed\n"));
        assert!(!ok("/* \n-- Dump completed\n"));
        assert!(!ok("-- Dump completedness\n"));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut check = SqlDumpCheck::new();
        check.feed(b"-- ");
        check.feed(&vec![b'x'; 1 << 20]);
        assert!(check.comment.as_ref().is_some_and(|c| c.len() == MAX_COMMENT));
        check.feed(b"\nINSERT INTO `");
        check.feed(&vec![b'n'; 1 << 20]);
        check.feed(b"` VALUES (0x");
        check.feed(&vec![b'f'; 1 << 20]);
        assert!(check.name.is_empty() && check.word.len() == MAX_NAME);
        check.feed(b"),(1);\n-- Dump completed\n");
        let summary = check.finish().unwrap();
        assert_eq!(summary.tables.values().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(summary.tables.keys().next().map(String::len), Some(MAX_NAME));
    }
}
