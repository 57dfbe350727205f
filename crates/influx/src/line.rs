//! InfluxDB line protocol, written straight into one reusable buffer (no per-point allocation).

/// The escaped measurement and tags of a series (`measurement,tag=value,...`), for
/// [`LineBuilder::point_in_series`]. Empty tag values are left out, as in [`Point::tag`].
pub fn series_key(measurement: &str, tags: &[(&str, &str)]) -> String {
    let mut key = String::with_capacity(64);
    escape_into(&mut key, measurement, Place::Measurement);
    for (tag, value) in tags.iter().filter(|(_, value)| !value.is_empty()) {
        key.push(',');
        escape_into(&mut key, tag, Place::Key);
        key.push('=');
        escape_into(&mut key, value, Place::Key);
    }
    key
}

/// Appends points to a line-protocol buffer. Timestamps are milliseconds.
#[derive(Debug, Default)]
pub struct LineBuilder {
    buffer: String,
    lines: usize,
}

/// One point being written; finish it with [`Point::timestamp_ms`].
pub struct Point<'a> {
    builder: &'a mut LineBuilder,
    has_field: bool,
}

impl LineBuilder {
    pub fn with_capacity(bytes: usize) -> Self {
        LineBuilder { buffer: String::with_capacity(bytes), lines: 0 }
    }

    /// Starts a point. Tags must be added before fields.
    pub fn point(&mut self, measurement: &str) -> Point<'_> {
        if self.lines > 0 {
            self.buffer.push('\n');
        }
        escape_into(&mut self.buffer, measurement, Place::Measurement);
        Point { builder: self, has_field: false }
    }

    /// Starts a point of a series encoded once with [`series_key`]: many points of one series
    /// (a telemetry batch) then skip escaping the same tags again. Add fields only.
    pub fn point_in_series(&mut self, series_key: &str) -> Point<'_> {
        if self.lines > 0 {
            self.buffer.push('\n');
        }
        self.buffer.push_str(series_key);
        Point { builder: self, has_field: false }
    }

    /// Appends already-encoded lines (from the outbox).
    pub fn push_encoded(&mut self, lines: &str) {
        if lines.is_empty() {
            return;
        }
        if self.lines > 0 {
            self.buffer.push('\n');
        }
        self.buffer.push_str(lines);
        self.lines += lines.lines().count();
    }

    pub fn lines(&self) -> usize {
        self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    pub fn as_str(&self) -> &str {
        &self.buffer
    }

    /// A position to [`truncate`](Self::truncate) back to.
    pub fn mark(&self) -> (usize, usize) {
        (self.buffer.len(), self.lines)
    }

    /// Drops everything appended after `mark`.
    pub fn truncate(&mut self, mark: (usize, usize)) {
        self.buffer.truncate(mark.0);
        self.lines = mark.1;
    }

    pub fn clear(&mut self) {
        self.buffer.clear();
        self.lines = 0;
    }

    pub fn into_string(self) -> String {
        self.buffer
    }
}

/// 2^53: every integer below it is exactly representable as an f64.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

impl Point<'_> {
    /// Adds a tag; empty values are left out (line protocol has no empty tag values).
    pub fn tag(self, key: &str, value: &str) -> Self {
        debug_assert!(!self.has_field, "tags must come before fields");
        if !value.is_empty() {
            let buffer = &mut self.builder.buffer;
            buffer.push(',');
            escape_into(buffer, key, Place::Key);
            buffer.push('=');
            escape_into(buffer, value, Place::Key);
        }
        self
    }

    fn field_key(&mut self, key: &str) {
        let buffer = &mut self.builder.buffer;
        buffer.push(if self.has_field { ',' } else { ' ' });
        escape_into(buffer, key, Place::Key);
        buffer.push('=');
        self.has_field = true;
    }

    /// Adds a float field; non-finite values are left out (line protocol cannot carry them).
    pub fn float(mut self, key: &str, value: f64) -> Self {
        if value.is_finite() {
            self.field_key(key);
            // Floats are most of a telemetry line. Whole numbers (an rpm, a battery percentage)
            // are common and itoa writes them several times faster than ryu; without an `i`
            // suffix line protocol still reads them as floats. Below 2^53 the conversion is
            // exact.
            if value.fract() == 0.0 && value.abs() < MAX_EXACT_INTEGER {
                self.builder.buffer.push_str(itoa::Buffer::new().format(value as i64));
            } else {
                // ryu: the shortest representation that round-trips, several times faster
                // than `{}`.
                self.builder.buffer.push_str(ryu::Buffer::new().format_finite(value));
            }
        }
        self
    }

    pub fn int(mut self, key: &str, value: i64) -> Self {
        self.field_key(key);
        self.builder.buffer.push_str(itoa::Buffer::new().format(value));
        self.builder.buffer.push('i');
        self
    }

    /// Adds a string field; empty strings are left out.
    pub fn string(mut self, key: &str, value: &str) -> Self {
        if !value.is_empty() {
            self.field_key(key);
            let buffer = &mut self.builder.buffer;
            buffer.push('"');
            escape_into(buffer, value, Place::StringField);
            buffer.push('"');
        }
        self
    }

    /// Ends the point. A point without fields is invalid line protocol, so it is dropped.
    pub fn timestamp_ms(self, time_ms: i64) {
        let builder = self.builder;
        if !self.has_field {
            // Roll back to the end of the previous line.
            let end = builder.buffer.rfind('\n').unwrap_or(0);
            builder.buffer.truncate(end);
            return;
        }
        builder.buffer.push(' ');
        builder.buffer.push_str(itoa::Buffer::new().format(time_ms));
        builder.lines += 1;
    }
}

/// Where a text goes in a line; each place escapes its own characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Measurement,
    /// Tag keys, tag values and field keys.
    Key,
    /// Inside a double-quoted string field.
    StringField,
}

/// What line protocol cannot carry, whatever the escaping: a newline ends the line in every
/// place, and a tag value or key that ends with a backslash escapes the separator after it
/// (InfluxDB 1.x treats any character after a backslash as escaped and has no escape for the
/// backslash itself). Each such character is written as U+FFFD, visibly not the original.
pub const UNREPRESENTABLE: char = '\u{FFFD}';

/// The value InfluxDB reads back for a tag value (or key) written by this module.
pub fn tag_value_as_stored(value: &str) -> String {
    let mut stored: String = value.chars().map(|c| if c == '\n' { UNREPRESENTABLE } else { c }).collect();
    if stored.ends_with('\\') {
        stored.pop();
        stored.push(UNREPRESENTABLE);
    }
    stored
}

/// The value InfluxDB reads back for a string field written by this module.
pub fn string_field_as_stored(value: &str) -> String {
    value.chars().map(|c| if c == '\n' { UNREPRESENTABLE } else { c }).collect()
}

fn escape_into(buffer: &mut String, value: &str, place: Place) {
    // Almost nothing needs escaping: one cheap test per byte for every character any place
    // treats specially, and the text is copied whole.
    let special = |b: u8| match place {
        Place::Measurement => matches!(b, b',' | b' ' | b'\n'),
        Place::Key => matches!(b, b',' | b'=' | b' ' | b'\n'),
        Place::StringField => matches!(b, b'"' | b'\\' | b'\n'),
    };
    let trailing_backslash = place != Place::StringField && value.ends_with('\\');
    if !trailing_backslash && !value.bytes().any(special) {
        buffer.push_str(value);
        return;
    }
    let last = value.len().saturating_sub(1);
    for (at, c) in value.char_indices() {
        if c == '\n' || (trailing_backslash && at == last) {
            buffer.push(UNREPRESENTABLE);
            continue;
        }
        // All the specials are ASCII, so a char that is one is that byte.
        if c.is_ascii() && special(c as u8) {
            buffer.push('\\');
        }
        buffer.push(c);
    }
}

/// A line read the way InfluxDB 1.x reads it: the reference the escaping is tested against.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine {
    pub measurement: String,
    pub tags: Vec<(String, String)>,
    pub fields: Vec<(String, FieldValue)>,
    pub timestamp: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Float(f64),
    Integer(i64),
    String(String),
    Boolean(bool),
}

/// Parses one line by InfluxDB 1.x's rules (models/points.go): a byte after a backslash never
/// ends a token, `\,`, `\ ` and `\=` unescape in keys and tag values (any other backslash
/// stays), `\"` and `\\` unescape in string fields. For tests, fuzzing and reading back lines
/// InfluxDB refused (to name the pen in the quarantine); not for speed.
pub fn parse_line(line: &str) -> Result<ParsedLine, String> {
    let bytes = line.as_bytes();
    // The end of a token: the first of `stops` not preceded by a backslash.
    let token_end = |from: usize, stops: &[u8]| {
        (from..bytes.len()).find(|&i| stops.contains(&bytes[i]) && (i == 0 || bytes[i - 1] != b'\\'))
    };
    let unescape_key = |raw: &str| raw.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=");
    if line.contains('\n') {
        return Err("a newline inside a line".into());
    }
    let key_end = token_end(0, b" ").ok_or("missing fields")?;
    let key = &line[..key_end];
    let measurement_end = token_end(0, b", ").unwrap_or(key_end).min(key_end);
    let measurement = unescape_key(&key[..measurement_end]);
    if measurement.is_empty() {
        return Err("missing measurement".into());
    }
    let mut tags = Vec::new();
    let mut at = measurement_end;
    while at < key_end {
        // `at` is on the comma before a tag.
        let eq = token_end(at + 1, b"=,").filter(|&i| i < key_end && bytes[i] == b'=').ok_or("missing tag value")?;
        let end = token_end(eq + 1, b",= ").unwrap_or(key_end).min(key_end);
        if end < key_end && bytes[end] == b'=' {
            return Err("invalid tag format".into());
        }
        let (k, v) = (&line[at + 1..eq], &line[eq + 1..end]);
        if k.is_empty() || v.is_empty() {
            return Err("missing tag key or value".into());
        }
        tags.push((unescape_key(k), unescape_key(v)));
        at = end;
    }
    // Fields: key=value pairs separated by commas; string values are quoted.
    let mut fields = Vec::new();
    let mut at = key_end + 1;
    loop {
        let eq = token_end(at, b"=").ok_or("missing field value")?;
        let field_key = unescape_key(&line[at..eq]);
        if field_key.is_empty() {
            return Err("missing field key".into());
        }
        let value_start = eq + 1;
        let (value, next) = if bytes.get(value_start) == Some(&b'"') {
            let (value, close) = parse_string_field(&line[value_start + 1..]).ok_or("unbalanced quotes")?;
            (FieldValue::String(value), value_start + 1 + close + 1)
        } else {
            let end = (value_start..bytes.len()).find(|&i| matches!(bytes[i], b',' | b' ')).unwrap_or(bytes.len());
            (parse_scalar(&line[value_start..end])?, end)
        };
        fields.push((field_key, value));
        match bytes.get(next) {
            Some(b',') => at = next + 1,
            Some(b' ') => {
                let timestamp = line[next + 1..].trim_end_matches(' ');
                let timestamp = timestamp.parse().map_err(|_| format!("bad timestamp {timestamp:?}"))?;
                return Ok(ParsedLine { measurement, tags, fields, timestamp: Some(timestamp) });
            }
            None => return Ok(ParsedLine { measurement, tags, fields, timestamp: None }),
            Some(other) => return Err(format!("unexpected {:?} after a field value", *other as char)),
        }
    }
}

/// Reads a string field after its opening quote: the value and the offset of the closing quote.
/// `\\"` and `\\\\` are pairs; any other backslash stands for itself.
fn parse_string_field(text: &str) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, at)),
            '\\' if matches!(chars.peek(), Some((_, '"' | '\\'))) => value.push(chars.next()?.1),
            other => value.push(other),
        }
    }
    None
}

fn parse_scalar(text: &str) -> Result<FieldValue, String> {
    if let Some(integer) = text.strip_suffix('i') {
        return integer.parse().map(FieldValue::Integer).map_err(|_| format!("invalid integer {text:?}"));
    }
    match text {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Boolean(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Boolean(false)),
        _ => {}
    }
    text.parse().map(FieldValue::Float).map_err(|_| format!("invalid number {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_tags_fields_and_time() {
        let mut lines = LineBuilder::default();
        lines
            .point("pen_telemetry")
            .tag("clinic", "c 1")
            .tag("chain", "")
            .float("depth_mm", 1.25)
            .int("strokes", 7)
            .string("session_id", "s\"1")
            .timestamp_ms(1000);
        lines.point("m").float("x", 0.5).timestamp_ms(2000);
        assert_eq!(
            lines.as_str(),
            "pen_telemetry,clinic=c\\ 1 depth_mm=1.25,strokes=7i,session_id=\"s\\\"1\" 1000\nm x=0.5 2000"
        );
        assert_eq!(lines.lines(), 2);
    }

    #[test]
    fn drops_points_without_fields_and_non_finite_floats() {
        let mut lines = LineBuilder::default();
        lines.point("a").float("x", 1.0).timestamp_ms(1);
        lines.point("b").float("x", f64::NAN).timestamp_ms(2);
        lines.point("c").float("x", f64::INFINITY).float("y", 2.0).timestamp_ms(3);
        assert_eq!(lines.as_str(), "a x=1 1\nc y=2 3");
        assert_eq!(lines.lines(), 2);
    }

    #[test]
    fn floats_read_back_exactly_whole_or_not() {
        let values = [
            0.0,
            -0.0,
            7000.0,
            -273.0,
            0.75,
            31.5,
            1e-300,
            123456.789,
            9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
            1e20,
            -1e300,
            f64::MAX,
        ];
        for value in values {
            let mut lines = LineBuilder::default();
            lines.point("m").float("x", value).timestamp_ms(1);
            let text = lines.as_str();
            let written = text.strip_prefix("m x=").and_then(|rest| rest.strip_suffix(" 1")).unwrap();
            // No `i` suffix: InfluxDB reads a whole number without one as a float.
            assert!(!written.ends_with('i'), "{text}");
            assert_eq!(written.parse::<f64>().unwrap(), value, "{text}");
        }
    }

    #[test]
    fn truncates_back_to_a_mark() {
        let mut lines = LineBuilder::default();
        lines.point("a").int("x", 1).timestamp_ms(1);
        let mark = lines.mark();
        lines.push_encoded("b x=2i 2\nc x=3i 3");
        assert_eq!(lines.lines(), 3);
        lines.truncate(mark);
        assert_eq!((lines.as_str(), lines.lines()), ("a x=1i 1", 1));
    }

    #[test]
    fn escapes_commas_equals_and_newlines_in_tags() {
        let mut lines = LineBuilder::default();
        lines.point("m,x").tag("k=1", "a,b=c\nd").int("v", 1).timestamp_ms(5);
        assert_eq!(lines.as_str(), "m\\,x,k\\=1=a\\,b\\=c\u{FFFD}d v=1i 5");
    }

    #[test]
    fn a_trailing_backslash_cannot_escape_the_separator() {
        // A pen model "SP-2\" once made InfluxDB refuse every line of that pen.
        let mut lines = LineBuilder::default();
        lines.point("m").tag("model", "SP-2\\").tag("pen", "P1").string("s", "a\\").timestamp_ms(1);
        assert_eq!(lines.as_str(), "m,model=SP-2\u{FFFD},pen=P1 s=\"a\\\\\" 1");
        let parsed = parse_line(lines.as_str()).unwrap();
        assert_eq!(parsed.tags, [("model".into(), "SP-2\u{FFFD}".into()), ("pen".into(), "P1".into())]);
        assert_eq!(parsed.fields, [("s".into(), FieldValue::String("a\\".into()))]);
    }

    #[test]
    fn backslashes_inside_values_stand_for_themselves() {
        let mut lines = LineBuilder::default();
        lines.point("m").tag("t", "a\\,b\\ c\\=d\\e").string("s", "x\\\"y").timestamp_ms(1);
        let parsed = parse_line(lines.as_str()).unwrap();
        assert_eq!(parsed.tags, [("t".into(), "a\\,b\\ c\\=d\\e".into())]);
        assert_eq!(parsed.fields, [("s".into(), FieldValue::String("x\\\"y".into()))]);
    }

    #[test]
    fn the_reference_parser_refuses_what_influxdb_refuses() {
        // Seen from InfluxDB 1.6.7: "invalid tag format".
        assert!(parse_line("m,model=SP-2\\ x=1 1").is_err());
        assert!(parse_line("m,model=a\\\\ x=1 2").is_err());
        assert!(parse_line("m x=\"open 1").is_err());
        assert_eq!(parse_line("m,t=c\\d x=1 4").unwrap().tags, [("t".into(), "c\\d".into())]);
    }

    proptest::proptest! {
        /// Whatever the values, the line parses, and reads back as documented.
        #[test]
        fn every_value_reads_back_as_stored(tag in "\\PC*", field in "\\PC*", other in ".*") {
            let mut lines = LineBuilder::default();
            // `n` keeps a field in the point when every string is empty.
            lines.point("m").tag("a", &tag).tag("b", &other).string("s", &field).string("o", &other).int("n", 1).timestamp_ms(7);
            let parsed = parse_line(lines.as_str()).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}: {}", lines.as_str())))?;
            let mut expected_tags = Vec::new();
            if !tag.is_empty() { expected_tags.push(("a".to_string(), tag_value_as_stored(&tag))); }
            if !other.is_empty() { expected_tags.push(("b".to_string(), tag_value_as_stored(&other))); }
            proptest::prop_assert_eq!(parsed.tags, expected_tags);
            let mut expected_fields = Vec::new();
            if !field.is_empty() { expected_fields.push(("s".to_string(), FieldValue::String(string_field_as_stored(&field)))); }
            if !other.is_empty() { expected_fields.push(("o".to_string(), FieldValue::String(string_field_as_stored(&other)))); }
            expected_fields.push(("n".to_string(), FieldValue::Integer(1)));
            proptest::prop_assert_eq!(parsed.fields, expected_fields);
        }
    }
}
