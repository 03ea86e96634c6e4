//! The compliance report as a PDF (A4, text and rules only), written with
//! `pdf-writer` in the PDF base fonts (Helvetica, Helvetica-Bold with
//! WinAnsiEncoding): nothing embedded, so a report of 1,000 devices is a
//! few hundred kB and every viewer and text extractor reads it.
//!
//! Owns the layout only; the figures are the document's
//! ([`super::ComplianceDocument`]) as the JSON shows them. Characters
//! outside printable ASCII print as `?` (the base fonts' encoding).

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

use super::{ComplianceDocument, MAX_REPORT_DEVICE_CVES, time_text};

const PAGE_W: f32 = 595.0;
const PAGE_H: f32 = 842.0;
const MARGIN: f32 = 40.0;
const BODY: f32 = 8.5;
const LINE: f32 = 12.0;

const REGULAR: Name<'static> = Name(b"F1");
const BOLD: Name<'static> = Name(b"F2");

/// Helvetica's advance widths (1/1000 em) of printable ASCII, 0x20..=0x7e
/// (Adobe's AFM).
const HELVETICA_WIDTHS: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, // ' '../
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, // 0-9
    278, 278, 584, 584, 584, 556, 1015, // :;<=>?@
    667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, // A-M
    722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, // N-Z
    278, 278, 278, 469, 556, 333, // [\]^_`
    556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, // a-m
    556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, // n-z
    334, 260, 334, 584, // {|}~
];

/// Printable ASCII only (the rest as `?`).
fn plain(s: &str) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// Width in points of `s` (printable ASCII) in Helvetica at `size`; bold
/// is about 5 % wider.
fn width(s: &str, size: f32, bold: bool) -> f32 {
    let w: u32 = s
        .bytes()
        .map(|b| {
            HELVETICA_WIDTHS
                .get(usize::from(b.wrapping_sub(0x20)))
                .copied()
                .map_or(556, u32::from)
        })
        .sum();
    let w = w as f32 * size / 1000.0;
    if bold { w * 1.06 } else { w }
}

/// `s` cut to fit in `max` points (with `...`).
fn fit(s: &str, size: f32, bold: bool, max: f32) -> String {
    let s = plain(s);
    if width(&s, size, bold) <= max {
        return s;
    }
    let mut out = String::new();
    for c in s.chars() {
        let next = format!("{out}{c}...");
        if width(&next, size, bold) > max {
            break;
        }
        out.push(c);
    }
    out.push_str("...");
    out
}

/// Words joined with `sep` into lines of at most `max` points.
fn wrap(words: &[&str], sep: &str, size: f32, max: f32) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for w in words {
        let w = fit(w, size, false, max);
        if !line.is_empty() {
            let candidate = format!("{line}{sep}{w}");
            if width(&candidate, size, false) <= max {
                line = candidate;
                continue;
            }
            lines.push(std::mem::take(&mut line));
        }
        line = w;
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// A table column: header, width in points, right-aligned (numbers).
struct Col {
    head: &'static str,
    width: f32,
    right: bool,
}

const fn col(head: &'static str, width: f32, right: bool) -> Col {
    Col { head, width, right }
}

/// Pages being written, top to bottom.
struct Writer {
    pages: Vec<Content>,
    y: f32,
}

impl Writer {
    fn new() -> Writer {
        let mut w = Writer {
            pages: Vec::new(),
            y: 0.0,
        };
        w.new_page();
        w
    }

    fn new_page(&mut self) {
        self.pages.push(Content::new());
        self.y = PAGE_H - MARGIN;
    }

    fn page(&mut self) -> &mut Content {
        match self.pages.last_mut() {
            Some(p) => p,
            None => unreachable!("a writer always has a page"),
        }
    }

    /// Room for `h` points more, or a new page.
    fn room(&mut self, h: f32) -> bool {
        if self.y - h < MARGIN + LINE {
            self.new_page();
            return false;
        }
        true
    }

    fn text_at(&mut self, x: f32, y: f32, s: &str, size: f32, bold: bool) {
        let p = self.page();
        p.begin_text();
        p.set_font(if bold { BOLD } else { REGULAR }, size);
        p.set_text_matrix([1.0, 0.0, 0.0, 1.0, x, y]);
        p.show(Str(s.as_bytes()));
        p.end_text();
    }

    /// One line of text at the left margin.
    fn line(&mut self, s: &str, size: f32, bold: bool) {
        self.room(size + 4.0);
        self.y -= size + 4.0;
        let s = fit(s, size, bold, PAGE_W - 2.0 * MARGIN);
        let y = self.y;
        self.text_at(MARGIN, y, &s, size, bold);
    }

    fn gap(&mut self, h: f32) {
        self.y -= h;
    }

    fn rule(&mut self, y: f32) {
        let p = self.page();
        p.set_line_width(0.5);
        p.move_to(MARGIN, y);
        p.line_to(PAGE_W - MARGIN, y);
        p.stroke();
    }

    fn row(&mut self, cols: &[Col], cells: &[String], bold: bool) {
        self.y -= LINE;
        let y = self.y;
        let mut x = MARGIN;
        for (c, v) in cols.iter().zip(cells) {
            let s = fit(v, BODY, bold, c.width - 4.0);
            let tx = if c.right {
                x + c.width - 4.0 - width(&s, BODY, bold)
            } else {
                x
            };
            self.text_at(tx, y, &s, BODY, bold);
            x += c.width;
        }
    }

    fn header(&mut self, cols: &[Col]) {
        let cells: Vec<String> = cols.iter().map(|c| c.head.to_string()).collect();
        self.row(cols, &cells, true);
        let y = self.y - 3.0;
        self.rule(y);
        self.y -= 2.0;
    }

    /// A titled table; the header repeats on every page it spans.
    fn table(&mut self, title: &str, cols: &[Col], rows: &[Vec<String>]) {
        self.room(3.0 * LINE + 16.0);
        self.gap(10.0);
        self.line(title, 12.0, true);
        self.header(cols);
        for r in rows {
            if !self.room(LINE) {
                self.line(&format!("{title} (continued)"), 10.0, true);
                self.header(cols);
            }
            self.row(cols, r, false);
        }
    }
}

/// The report as a PDF.
pub fn render(doc: &ComplianceDocument) -> Vec<u8> {
    let mut w = Writer::new();
    w.line("Patch compliance report", 18.0, true);
    w.gap(4.0);
    let customer = doc.customer.as_deref().unwrap_or("all customers");
    w.line(&format!("Customer: {customer}"), 11.0, false);
    w.line(&format!("Source: {}", doc.source), 11.0, false);
    w.line(
        &format!("Generated: {}", time_text(doc.generated_ms)),
        11.0,
        false,
    );
    w.gap(8.0);
    w.line(
        &format!(
            "Compliance: {} ({} of {} devices compliant)",
            doc.percent_text(),
            doc.compliant,
            doc.devices_total
        ),
        14.0,
        true,
    );
    w.line(
        &format!(
            "Non-compliant: {}   Unsupported release: {}   Not assessed: {}   Reboot required: {}",
            doc.non_compliant, doc.unsupported_release, doc.not_assessed, doc.reboot_required
        ),
        10.0,
        false,
    );
    let s = &doc.security_patches;
    w.line(
        &format!(
            "Missing patches: {}   Missing security patches: critical {}   high {}   medium {}   low {}",
            doc.missing_patches, s.critical, s.high, s.medium, s.low
        ),
        10.0,
        false,
    );

    let cols = [
        col("Device", 96.0, false),
        col("Site", 70.0, false),
        col("Compliance", 84.0, false),
        col("Missing", 38.0, true),
        col("Critical", 36.0, true),
        col("High", 26.0, true),
        col("Medium", 40.0, true),
        col("Low", 24.0, true),
        col("Fixable", 36.0, true),
        col("Open", 30.0, true),
        col("Risk", 25.0, true),
    ];
    let rows: Vec<Vec<String>> = doc
        .devices
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.site.clone(),
                d.compliance.clone(),
                d.missing_patches.to_string(),
                d.security.critical.to_string(),
                d.security.high.to_string(),
                d.security.medium.to_string(),
                d.security.low.to_string(),
                d.fixable_cves.to_string(),
                d.open_cves.to_string(),
                d.risk.map_or_else(|| "-".to_string(), |r| r.to_string()),
            ]
        })
        .collect();
    w.table("Devices", &cols, &rows);
    if doc.devices_left_out > 0 {
        w.line(
            &format!(
                "... and {} more devices (see the CSV report)",
                doc.devices_left_out
            ),
            BODY,
            false,
        );
    }

    // The CVE ids of each device that has some (the CSV lists them all).
    let exposed: Vec<_> = doc.devices.iter().filter(|d| !d.cves.is_empty()).collect();
    if !exposed.is_empty() {
        w.room(3.0 * LINE + 16.0);
        w.gap(10.0);
        w.line("CVEs per device", 12.0, true);
        w.line(
            "Fixable by an offered upgrade first, then fixed in the release but not in the device's repositories, then without a fix yet.",
            BODY,
            false,
        );
        for d in exposed {
            let shown = d.cves.len().min(MAX_REPORT_DEVICE_CVES);
            let mut words: Vec<&str> = d.cves[..shown].iter().map(String::as_str).collect();
            let more = (d.cves.len() > shown)
                .then(|| format!("... and {} more (see the CSV report)", d.cves.len() - shown));
            if let Some(m) = &more {
                words.push(m);
            }
            let title = if d.site.is_empty() {
                format!("{} ({} CVEs)", d.name, d.cves.len())
            } else {
                format!("{} - {} ({} CVEs)", d.name, d.site, d.cves.len())
            };
            let lines = wrap(&words, ", ", BODY, PAGE_W - 2.0 * MARGIN - 12.0);
            // The device's name stays with its first line.
            w.room(2.0 * LINE);
            w.y -= LINE;
            let y = w.y;
            let title = fit(&title, BODY, true, PAGE_W - 2.0 * MARGIN);
            w.text_at(MARGIN, y, &title, BODY, true);
            for l in lines {
                if !w.room(LINE) {
                    w.y -= LINE;
                    let y = w.y;
                    let cont = fit(&format!("{} (continued)", d.name), BODY, true, PAGE_W);
                    w.text_at(MARGIN, y, &cont, BODY, true);
                }
                w.y -= LINE;
                let y = w.y;
                w.text_at(MARGIN + 12.0, y, &l, BODY, false);
            }
        }
    }

    let cols = [
        col("Package", 130.0, false),
        col("Candidate", 150.0, false),
        col("Severity", 60.0, false),
        col("Security", 50.0, false),
        col("Devices", 60.0, true),
        col("CVEs", 60.0, true),
    ];
    let rows: Vec<Vec<String>> = doc
        .top_patches
        .iter()
        .map(|p| {
            vec![
                p.source.clone(),
                p.candidate.clone(),
                if p.severity.is_empty() {
                    "-".into()
                } else {
                    p.severity.clone()
                },
                if p.security { "yes" } else { "no" }.into(),
                p.devices.to_string(),
                p.cves.to_string(),
            ]
        })
        .collect();
    w.table("Top missing patches", &cols, &rows);
    if rows.is_empty() {
        w.line("No missing patches.", BODY, false);
    }

    let cols = [
        col("CVE", 130.0, false),
        col("Severity", 70.0, false),
        col("Devices", 70.0, true),
        col("Fixable", 70.0, true),
        col("Not in repositories", 90.0, true),
        col("No fix yet", 80.0, true),
    ];
    let rows: Vec<Vec<String>> = doc
        .top_cves
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                c.severity.clone(),
                c.devices.to_string(),
                c.fixable.to_string(),
                c.fix_not_in_repositories.to_string(),
                c.open.to_string(),
            ]
        })
        .collect();
    w.table("Open CVEs", &cols, &rows);
    if rows.is_empty() {
        w.line("No open CVEs.", BODY, false);
    }

    write_pdf(w.pages, customer)
}

/// Catalog, page tree, fonts, pages with a footer, document info.
fn write_pdf(pages: Vec<Content>, customer: &str) -> Vec<u8> {
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let regular = Ref::new(3);
    let bold = Ref::new(4);
    let info = Ref::new(5);
    let first = 6;
    let n = pages.len() as i32;
    let page_ref = |i: i32| Ref::new(first + 2 * i);
    let content_ref = |i: i32| Ref::new(first + 2 * i + 1);

    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree).kids((0..n).map(page_ref)).count(n);
    pdf.type1_font(regular)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    let title = plain(&format!("Patch compliance report: {customer}"));
    pdf.document_info(info)
        .title(TextStr(&title))
        .creator(TextStr("Outpost"));

    for (i, mut content) in pages.into_iter().enumerate() {
        let i = i as i32;
        let footer = format!("Page {} of {}", i + 1, n);
        content.begin_text();
        content.set_font(REGULAR, 8.0);
        content.set_text_matrix([
            1.0,
            0.0,
            0.0,
            1.0,
            PAGE_W - MARGIN - width(&footer, 8.0, false),
            MARGIN / 2.0,
        ]);
        content.show(Str(footer.as_bytes()));
        content.end_text();
        let mut page = pdf.page(page_ref(i));
        page.media_box(Rect::new(0.0, 0.0, PAGE_W, PAGE_H));
        page.parent(tree);
        page.contents(content_ref(i));
        page.resources()
            .fonts()
            .pair(REGULAR, regular)
            .pair(BOLD, bold);
        page.finish();
        pdf.stream(content_ref(i), &content.finish());
    }
    pdf.finish()
}

#[cfg(test)]
mod tests {
    use super::super::{ReportCve, ReportDevice, ReportPatch, SeverityFigures};
    use super::*;

    /// The strings a PDF shows, page by page, from its uncompressed content
    /// streams (what this renderer writes): enough to check the figures
    /// without a PDF library.
    pub(crate) fn shown_strings(pdf: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < pdf.len() {
            if pdf[i] != b'(' {
                i += 1;
                continue;
            }
            // A literal string: escapes, and balanced parentheses inside.
            let (mut s, mut depth) = (Vec::new(), 1);
            i += 1;
            while i < pdf.len() {
                match pdf[i] {
                    b'\\' if i + 1 < pdf.len() => {
                        i += 1;
                        s.push(pdf[i]);
                    }
                    b'(' => {
                        depth += 1;
                        s.push(b'(');
                    }
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                        s.push(b')');
                    }
                    b => s.push(b),
                }
                i += 1;
            }
            i += 1;
            if pdf[i.min(pdf.len())..]
                .trim_ascii_start()
                .starts_with(b"Tj")
            {
                out.push(String::from_utf8_lossy(&s).into_owned());
            }
        }
        out
    }

    fn doc(devices: usize) -> ComplianceDocument {
        ComplianceDocument {
            customer: Some("acme".into()),
            source: "central".into(),
            generated_ms: 1_764_460_500_000,
            devices_total: devices as u32,
            compliant: 1,
            non_compliant: devices as u32 - 1,
            compliance_percent: Some(100.0 / devices as f64),
            missing_patches: 7,
            security_patches: SeverityFigures {
                critical: 1,
                high: 2,
                medium: 3,
                low: 0,
            },
            devices: (0..devices)
                .map(|i| ReportDevice {
                    name: format!("host-{i:04}"),
                    site: "Main office (HQ)".into(),
                    compliance: "non-compliant".into(),
                    missing_patches: i as u64,
                    risk: Some(42),
                    ..Default::default()
                })
                .collect(),
            top_patches: vec![ReportPatch {
                source: "openssl".into(),
                candidate: "3.0.15-1~deb12u1".into(),
                severity: "high".into(),
                security: true,
                devices: 2,
                cves: 3,
            }],
            top_cves: vec![ReportCve {
                id: "CVE-2026-1234".into(),
                severity: "critical".into(),
                devices: 2,
                fixable: 1,
                fix_not_in_repositories: 0,
                open: 1,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_pdf_shows_the_documents_figures() {
        let pdf = render(&doc(3));
        assert!(pdf.starts_with(b"%PDF-"));
        let s = shown_strings(&pdf);
        for want in [
            "Customer: acme",
            "Generated: 2025-11-29 23:55 UTC",
            "Compliance: 33.3 % (1 of 3 devices compliant)",
            "host-0002",
            "Main office (HQ)",
            "openssl",
            "3.0.15-1~deb12u1",
            "CVE-2026-1234",
            "Page 1 of 1",
            "Medium",
            "Fixable",
        ] {
            assert!(s.iter().any(|x| x == want), "{want:?} not in {s:?}");
        }
    }

    #[test]
    fn a_long_device_list_spans_pages_with_the_header_repeated() {
        let pdf = render(&doc(300));
        let s = shown_strings(&pdf);
        let pages = s.iter().filter(|x| x.starts_with("Page ")).count();
        assert!(pages >= 5, "{pages} pages");
        assert!(s.iter().any(|x| x == &format!("Page {pages} of {pages}")));
        assert!(s.iter().any(|x| x == "Devices (continued)"));
        assert!(s.iter().any(|x| x == "host-0299"));
        // The header repeats on every page the table spans.
        let headers = s.iter().filter(|x| *x == "Fixable").count();
        assert!(headers >= pages - 1, "{headers} headers, {pages} pages");
    }

    #[test]
    fn each_device_lists_its_cve_ids_wrapped_and_capped() {
        let mut d = doc(3);
        d.devices[0].cves = vec!["CVE-2026-0001".into(), "CVE-2026-0002".into()];
        d.devices[1].cves = (0..150).map(|i| format!("CVE-2025-{i:05}")).collect();
        let pdf = render(&d);
        let s = shown_strings(&pdf);
        assert!(s.iter().any(|x| x == "CVEs per device"), "{s:?}");
        assert!(
            s.iter()
                .any(|x| x == "host-0000 - Main office (HQ) (2 CVEs)"),
            "{s:?}"
        );
        assert!(
            s.iter().any(|x| x == "CVE-2026-0001, CVE-2026-0002"),
            "{s:?}"
        );
        let ids: Vec<&String> = s.iter().filter(|x| x.starts_with("CVE-2025-")).collect();
        assert!(ids.len() > 5, "wrapped over several lines: {ids:?}");
        let all = ids
            .iter()
            .map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        assert!(all.contains("CVE-2025-00099") && !all.contains("CVE-2025-00100"));
        assert!(
            all.ends_with("... and 50 more (see the CSV report)"),
            "{all}"
        );
        for l in &ids {
            assert!(width(l, BODY, false) <= PAGE_W - 2.0 * MARGIN, "{l}");
        }
        assert!(
            !s.iter().any(|x| x.starts_with("host-0002 ")),
            "a device without CVEs gets no entry"
        );
    }

    #[test]
    fn text_outside_ascii_prints_as_question_marks_and_long_cells_are_cut() {
        assert_eq!(plain("café ☃"), "caf? ?");
        let cut = fit(&"x".repeat(500), BODY, false, 100.0);
        assert!(cut.ends_with("..."));
        assert!(width(&cut, BODY, false) <= 100.0);
    }
}
