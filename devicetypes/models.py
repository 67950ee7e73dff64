from .devices import EnergyMeter, GpsTracker, SmartPlug, WeatherStation

WeatherStationDevice, WeatherStationReading, WeatherStationMessage = WeatherStation.create_models()
SmartPlugDevice, SmartPlugReading, SmartPlugMessage = SmartPlug.create_models()
GpsTrackerDevice, GpsTrackerReading, GpsTrackerMessage = GpsTracker.create_models()
EnergyMeterDevice, EnergyMeterReading, EnergyMeterMessage = EnergyMeter.create_models()
