//! InfluxDB line protocol, written straight into one reusable buffer (no per-point allocation).

/// The escaped measurement and tags of a series (`measurement,tag=value,...`), for
/// [`LineBuilder::point_in_series`]. Empty tag values are left out, as in [`Point::tag`].
pub fn series_key(measurement: &str, tags: &[(&str, &str)]) -> String {
    let mut key = String::with_capacity(64);
    escape_into(&mut key, measurement, &[',', ' ']);
    for (tag, value) in tags.iter().filter(|(_, value)| !value.is_empty()) {
        key.push(',');
        escape_into(&mut key, tag, &[',', '=', ' ']);
        key.push('=');
        escape_into(&mut key, value, &[',', '=', ' ']);
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
        escape_into(&mut self.buffer, measurement, &[',', ' ']);
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
            escape_into(buffer, key, &[',', '=', ' ']);
            buffer.push('=');
            escape_into(buffer, value, &[',', '=', ' ']);
        }
        self
    }

    fn field_key(&mut self, key: &str) {
        let buffer = &mut self.builder.buffer;
        buffer.push(if self.has_field { ',' } else { ' ' });
        escape_into(buffer, key, &[',', '=', ' ']);
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
            escape_into(buffer, value, &['"', '\\']);
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

fn escape_into(buffer: &mut String, value: &str, special: &[char]) {
    // Almost nothing needs escaping: copy it whole (the specials are all ASCII, so a byte scan
    // finds them).
    // One cheap test per byte for every character any context escapes; the exact set is
    // checked only in the rare value that has one of them.
    let may_need_escape = value.bytes().any(|b| matches!(b, b'\n' | b',' | b'=' | b' ' | b'"' | b'\\'));
    let needs_escape =
        may_need_escape && value.bytes().any(|b| b == b'\n' || special.iter().any(|c| *c as u32 == u32::from(b)));
    if !needs_escape {
        buffer.push_str(value);
        return;
    }
    for c in value.chars() {
        if c == '\n' {
            buffer.push_str("\\n");
            continue;
        }
        if special.contains(&c) {
            buffer.push('\\');
        }
        buffer.push(c);
    }
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
        assert_eq!(lines.as_str(), "m\\,x,k\\=1=a\\,b\\=c\\nd v=1i 5");
    }
}
