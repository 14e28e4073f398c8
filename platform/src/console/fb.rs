//! Drawing text on the GOP framebuffer with an 8x8 bitmap font doubled vertically (8x16 cells), scaled
//! by a whole factor on large screens so the console stays about 80 columns wide, like a VGA text
//! console (1280x800 gives 80x25 cells of 16x32 pixels).

use crate::boot::FramebufferInfo;

/// Cell size in pixels at scale 1.
const CELL_W: usize = 8;
const CELL_H: usize = 16;

/// The framebuffer, owned by the console.
pub struct Framebuffer {
    info: FramebufferInfo,
    scale: usize,
}

impl Framebuffer {
    /// Takes ownership of the firmware's framebuffer.
    pub fn new(info: FramebufferInfo) -> Self {
        let scale = (info.width / 640).min(info.height / 400).clamp(1, 4);
        Framebuffer { info, scale }
    }

    /// Cell width and height in pixels.
    pub fn cell_size(&self) -> (usize, usize) {
        (CELL_W * self.scale, CELL_H * self.scale)
    }

    /// Text columns and rows.
    pub fn text_size(&self) -> (usize, usize) {
        let (w, h) = self.cell_size();
        (self.info.width / w, self.info.height / h)
    }

    fn pixel(&self, rgb: u32) -> u32 {
        if self.info.bgr {
            rgb & 0x00ff_ffff
        } else {
            ((rgb & 0xff) << 16) | (rgb & 0xff00) | ((rgb >> 16) & 0xff)
        }
    }

    fn row_ptr(&self, y: usize) -> *mut u32 {
        (self.info.base as usize + y * self.info.stride * 4) as *mut u32
    }

    /// Fills a rectangle (clipped to the screen).
    pub fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, rgb: u32) {
        let p = self.pixel(rgb);
        let x_end = (x + w).min(self.info.width);
        let y_end = (y + h).min(self.info.height);
        for yy in y..y_end {
            let row = self.row_ptr(yy);
            for xx in x..x_end {
                // SAFETY: (xx, yy) is inside the visible area, so the pixel lies inside the framebuffer the
                // firmware reported (stride * height * 4 bytes), which the console owns exclusively.
                unsafe { row.add(xx).write_volatile(p) }
            }
        }
    }

    /// Draws one character cell.
    pub fn glyph(&mut self, col: usize, row: usize, ch: char, fg: u32, bg: u32) {
        let (cols, rows) = self.text_size();
        if col >= cols || row >= rows {
            return;
        }
        let code = ch as usize;
        let bitmap = match code {
            0..=127 => font8x8::legacy::BASIC_LEGACY[code],
            // Box drawing (U+2500-U+257F): the DCUI's frames.
            0x2500..=0x257f => font8x8::legacy::BOX_LEGACY[code - 0x2500],
            _ => font8x8::legacy::BASIC_LEGACY[b'?' as usize],
        };
        let (fg, bg) = (self.pixel(fg), self.pixel(bg));
        let (cw, ch) = self.cell_size();
        let s = self.scale;
        for y in 0..ch {
            let bits = bitmap[y / (2 * s)];
            let line = self.row_ptr(row * ch + y);
            for x in 0..cw {
                let on = bits & (1 << (x / s)) != 0;
                // SAFETY: the cell is inside the visible area (checked above), hence inside the
                // framebuffer.
                unsafe { line.add(col * cw + x).write_volatile(if on { fg } else { bg }) }
            }
        }
    }

    /// Moves the text area up by one cell row and clears the last row.
    pub fn scroll_up(&mut self, bg: u32) {
        let (_, rows) = self.text_size();
        let (_, ch) = self.cell_size();
        let used = rows * ch;
        for y in 0..used - ch {
            // SAFETY: both rows are inside the visible area; `copy` handles the (impossible here) overlap
            // of one row with itself.
            unsafe { core::ptr::copy(self.row_ptr(y + ch), self.row_ptr(y), self.info.width) }
        }
        self.fill(0, used - ch, self.info.width, ch, bg);
    }
}

/// A scrolling text console on the framebuffer.
pub struct TextConsole {
    pub fb: Framebuffer,
    col: usize,
    row: usize,
    pub fg: u32,
    pub bg: u32,
}

impl TextConsole {
    /// A console with the given colours, screen cleared.
    pub fn new(fb: Framebuffer, fg: u32, bg: u32) -> Self {
        let mut c = TextConsole { fb, col: 0, row: 0, fg, bg };
        c.clear();
        c
    }

    /// Clears the screen with the background colour and homes the cursor.
    pub fn clear(&mut self) {
        let (w, h) = (self.fb.info.width, self.fb.info.height);
        self.fb.fill(0, 0, w, h, self.bg);
        self.col = 0;
        self.row = 0;
    }

    fn newline(&mut self) {
        let (_, rows) = self.fb.text_size();
        self.col = 0;
        if self.row + 1 < rows {
            self.row += 1;
        } else {
            self.fb.scroll_up(self.bg);
        }
    }

    /// Writes text, wrapping long lines.
    pub fn write(&mut self, s: &str) {
        let (cols, _) = self.fb.text_size();
        for ch in s.chars() {
            match ch {
                '\n' => self.newline(),
                '\r' => self.col = 0,
                c => {
                    if self.col >= cols {
                        self.newline();
                    }
                    self.fb.glyph(self.col, self.row, c, self.fg, self.bg);
                    self.col += 1;
                }
            }
        }
    }
}
