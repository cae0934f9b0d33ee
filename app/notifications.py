"""Telling the user a run has ended, also when EdgeTune is not in front: a desktop notification
where the desktop has a system tray, else a banner in the window; a beep when the setting is on.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QSettings, QTimer
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QApplication, QSystemTrayIcon, QWidget

from app.widgets.banner import SHOWN_MS, Banner

SOUND_KEY = "notify_sound"


class Notifier(QObject):
    """Shows a run's end through the tray or the banner; `sound_action` is the beep setting."""

    def __init__(self, window: QWidget, banner: Banner, settings: QSettings) -> None:
        super().__init__(window)
        self.window = window
        self.banner = banner
        self.sound_action = QAction("Beep when a run ends", self, checkable=True)
        self.sound_action.setChecked(settings.value(SOUND_KEY, False, type=bool))
        self.sound_action.toggled.connect(lambda on: settings.setValue(SOUND_KEY, on))
        self._tray: QSystemTrayIcon | None = None
        # The icon is there for the message only: none is left in the tray after it.
        self._tray_timer = QTimer(self, singleShot=True, interval=SHOWN_MS)

    def notify(self, title: str, text: str, failed: bool) -> None:
        if QSystemTrayIcon.isSystemTrayAvailable():
            if self._tray is None:
                self._tray = QSystemTrayIcon(QApplication.windowIcon(), self)
                self._tray.messageClicked.connect(self._raise_window)
                self._tray_timer.timeout.connect(self._tray.hide)
            self._tray.show()  # a hidden tray icon shows no message
            icon = QSystemTrayIcon.MessageIcon.Warning if failed else QSystemTrayIcon.MessageIcon.Information
            self._tray.showMessage(title, text, icon, SHOWN_MS)
            self._tray_timer.start()
        else:
            self.banner.show_notice(title, text, failed)
        QApplication.alert(self.window)  # the taskbar entry asks for attention
        if self.sound_action.isChecked():
            QApplication.beep()

    def _raise_window(self) -> None:
        self.window.showNormal()
        self.window.raise_()
        self.window.activateWindow()
